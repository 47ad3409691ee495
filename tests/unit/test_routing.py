"""Link-state routing: deltas, the database, signatures, the JSON form and shortest paths.

Node ids in the drawings: A=1, B=2, C=3, D=4, ...; S is the node computing its routes.
Numbers on edges are costs in microseconds; ``--`` is a link both ends list, ``->`` a
link only the tail lists.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from typing import Any

import pytest

from naas.core.crypto import ed25519_public
from naas.core.routing import (
    FULL_DELTA_EVERY,
    MAX_COST,
    MAX_HISTORY,
    MAX_HOPS,
    MAX_LINKS,
    ApplyResult,
    LinkStateDatabase,
    LinkStateDelta,
    LocalLinks,
    Route,
    compute_routes,
    decode_delta_untrusted,
    delta_signing_bytes,
    encode_delta,
    sign_delta,
    verify_delta,
)
from naas.core.wire import DEFAULT_HOP_LIMIT, BadPacket, DropReason

A, B, C, D, E, F = 1, 2, 3, 4, 5, 6
S = 100
KEY = b"\x11" * 32
OTHER_KEY = b"\x22" * 32
Graph = dict[int, dict[int, int]]  # node -> what it lists (neighbour -> cost)


def two_way(*edges: tuple[int, int, int]) -> Graph:
    graph: Graph = {}
    for u, v, cost in edges:
        graph.setdefault(u, {})[v] = cost
        graph.setdefault(v, {})[u] = cost
    return graph


def database(graph: Graph, seq: int = 1) -> LinkStateDatabase:
    db = LinkStateDatabase()
    for origin, links in graph.items():
        assert (
            db.apply(LinkStateDelta(origin, seq, True, tuple(sorted(links.items())))) is ApplyResult.APPLIED
        )
    return db


def routes_of(graph: Graph, source: int = S) -> dict[int, Route]:
    """Routes at ``source`` when its live links are exactly what the graph gives it."""
    return compute_routes(source, database(graph), graph.get(source, {}))


def reference_routes(source: int, graph: Graph, local: dict[int, int]) -> dict[int, Route]:
    """Hop-limited Bellman-Ford over (cost, hops, next hop) labels: slow and obviously right."""
    best: dict[int, tuple[int, int, int]] = {}
    layer = {n: (min(max(c, 1), MAX_COST), 1, n) for n, c in local.items() if n != source}
    for _ in range(MAX_HOPS):
        for node, label in layer.items():
            best[node] = min(best.get(node, label), label)
        following: dict[int, tuple[int, int, int]] = {}
        for u, (cost, hops, next_hop) in layer.items():
            for v, link_cost in graph.get(u, {}).items():
                if v != source and u in graph.get(v, {}):
                    label = (cost + link_cost, hops + 1, next_hop)
                    following[v] = min(following.get(v, label), label)
        layer = following
    return {node: Route(next_hop, cost, hops) for node, (cost, hops, next_hop) in best.items()}


# -- shortest paths --------------------------------------------------------------------------


def test_triangle_cut_and_restored() -> None:
    #        1000
    #   A ---------- B
    #    \           |
    # 2000\          | 1500
    #      `-------- C          A-C cut -> C via B; restored -> C direct again
    db = database(two_way((A, B, 1000), (B, C, 1500), (A, C, 2000)))
    assert compute_routes(A, db, {B: 1000, C: 2000}) == {B: Route(B, 1000, 1), C: Route(C, 2000, 1)}
    # A-C breaks: A's live links lose C at once; C's withdrawal may not have arrived yet.
    assert compute_routes(A, db, {B: 1000}) == {B: Route(B, 1000, 1), C: Route(B, 2500, 2)}
    assert db.apply(LinkStateDelta(C, 2, False, ((A, 0),))) is ApplyResult.APPLIED
    assert compute_routes(A, db, {B: 1000})[C] == Route(B, 2500, 2)
    # B's view: its route to A does not depend on the dead link either.
    assert compute_routes(B, db, {A: 1000, C: 1500})[A] == Route(A, 1000, 1)
    # Restored: direct again as soon as the live link is back.
    assert compute_routes(A, db, {B: 1000, C: 2000})[C] == Route(C, 2000, 1)
    # A cheaper detour wins even with the direct link up.
    assert compute_routes(A, db, {B: 1000, C: 3000})[C] == Route(B, 2500, 2)


def test_cost_tie_prefers_fewer_hops() -> None:
    #   S --3000-- C     C: 3000 direct, 3000 via A-B too -> direct (fewer hops)
    #   |          |
    # 1000       1000
    #   |          |
    #   A --1000-- B
    graph = two_way((S, C, 3000), (S, A, 1000), (A, B, 1000), (B, C, 1000))
    assert routes_of(graph)[C] == Route(C, 3000, 1)


def test_full_tie_prefers_lower_next_hop_whatever_the_order() -> None:
    #     .-- B --.
    #   S          D     all costs 1000: D via B (2) rather than C (3)
    #     `-- C --'
    edges = [(S, C, 1000), (S, B, 1000), (C, D, 1000), (B, D, 1000)]
    expected = {B: Route(B, 1000, 1), C: Route(C, 1000, 1), D: Route(B, 2000, 2)}
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(edges)
        graph = two_way(*edges)
        local = dict(rng.sample(sorted(graph[S].items()), k=2))
        assert compute_routes(S, database(graph), local) == expected


def test_one_way_claim_is_not_used() -> None:
    #   S --1000-- A ---1000--> C      A lists C, C does not list A: C unreachable
    graph = two_way((S, A, 1000))
    graph[A][C] = 1000
    graph[C] = {}
    assert routes_of(graph) == {A: Route(A, 1000, 1)}
    graph[C][A] = 1000  # C confirms: now usable
    assert routes_of(graph)[C] == Route(A, 2000, 2)


def test_source_live_links_are_authoritative_for_the_first_hop() -> None:
    #   S --1000-- A      A has not listed S yet (its delta is in flight): still direct.
    #   S ··(D)··         the database says S lists D (an old delta of ours), but the link
    #                     is not live: D is not a direct route.
    db = database({A: {}, D: {S: 500}, S: {A: 9999, D: 500}})
    assert compute_routes(S, db, {A: 1000}) == {A: Route(A, 1000, 1)}


def test_hop_limit() -> None:
    #   S - 1 - 2 - ... - 9       chain of cost-1 links: 8 hops reachable, 9 not
    chain = two_way(*((i, i + 1, 1) for i in range(1, 9)), (S, 1, 1))
    routes = routes_of(chain)
    assert routes[8] == Route(1, 8, 8)
    assert 9 not in routes
    assert MAX_HOPS == 8 <= DEFAULT_HOP_LIMIT


def test_longer_cheap_path_does_not_hide_shorter_costly_one() -> None:
    #   S -1- c1 -1- c2 ... -1- c7 -1- X -1- T      X is best reached in 8 hops (cost 8);
    #    \                           /              T then needs 9: too many, so T goes
    #     `--1000-- Y ----1000------'               S-Y-X-T (2001, 3 hops)
    chain = [S, *range(10, 17), 50]
    chained = ((u, v, 1) for u, v in itertools.pairwise(chain))
    graph = two_way(*chained, (S, 60, 1000), (60, 50, 1000), (50, 70, 1))
    routes = routes_of(graph)
    assert routes[50] == Route(10, 8, 8)
    assert routes[70] == Route(60, 2001, 3)
    assert routes == reference_routes(S, graph, graph[S])


def test_costs_are_clamped_and_source_excluded() -> None:
    db = database({A: {S: 1}})
    assert compute_routes(S, db, {A: 0, S: 5}) == {A: Route(A, 1, 1)}
    assert compute_routes(S, db, {A: 10 * MAX_COST})[A].cost == MAX_COST


def random_graph(rng: random.Random, count: int, near: int, chords: int) -> Graph:
    """A ring where each node links its ``near`` next nodes, plus random chords; about 5%
    of links are listed by one end only; costs from a small set, so ties happen."""
    nodes = list(range(1, count + 1))
    graph: Graph = {n: {} for n in nodes}
    pairs = {(n, nodes[(i + k) % count]) for i, n in enumerate(nodes) for k in range(1, near + 1)}
    for _ in range(chords):
        u, v = rng.sample(nodes, 2)
        pairs.add((u, v))
    for u, v in sorted(pairs):
        cost = rng.choice((500, 1000, 1000, 2000, 5000, 20_000, rng.randint(1, 60_000)))
        one_way = rng.random() < 0.05
        graph[u][v] = cost
        if not one_way:
            graph[v][u] = cost if rng.random() < 0.7 else rng.randint(1, 60_000)  # asymmetric
    return graph


@pytest.mark.parametrize(("seed", "near", "chords"), [(1, 1, 20), (2, 2, 60), (3, 3, 400), (4, 1, 0)])
def test_random_200_nodes_agree_with_bellman_ford(seed: int, near: int, chords: int) -> None:
    rng = random.Random(seed)
    graph = random_graph(rng, 200, near, chords)
    db = database(graph)
    hop_limited = 0
    for source in rng.sample(sorted(graph), 12):
        # Live links: what the source lists, minus a few that just died, plus one fresh.
        local = {n: c for n, c in graph[source].items() if rng.random() > 0.1}
        local[rng.choice([n for n in graph if n != source])] = rng.randint(1, 9000)
        routes = compute_routes(source, db, local)
        assert routes == reference_routes(source, graph, local)
        hop_limited += sum(1 for r in routes.values() if r.hops == MAX_HOPS)
    if near == 1 and chords == 0:
        assert hop_limited > 0  # the ring is long enough for the hop limit to matter


# -- the database ------------------------------------------------------------------------


def test_apply_stale_gap_applied() -> None:
    db = LinkStateDatabase()
    assert db.apply(LinkStateDelta(A, 5, False, ((B, 100),))) is ApplyResult.GAP  # unknown origin
    assert db.origins() == [] and db.seq_of(A) is None and db.snapshot(A) is None
    assert db.apply(LinkStateDelta(A, 5, True, ((B, 100), (C, 200)))) is ApplyResult.APPLIED
    assert db.apply(LinkStateDelta(A, 5, True, ())) is ApplyResult.STALE  # same seq
    assert db.apply(LinkStateDelta(A, 4, False, ())) is ApplyResult.STALE
    assert db.apply(LinkStateDelta(A, 7, False, ((D, 1),))) is ApplyResult.GAP  # 6 missing
    assert db.apply(LinkStateDelta(A, 6, False, ((B, 0), (D, 300), (C, 250)))) is ApplyResult.APPLIED
    assert db.seq_of(A) == 6
    assert dict(db.adjacency(A)) == {C: 250, D: 300}
    assert db.snapshot(A) == LinkStateDelta(A, 6, True, ((C, 250), (D, 300)))
    assert db.apply(LinkStateDelta(A, 7, False, ((E, 0),))) is ApplyResult.APPLIED  # removing unknown
    assert db.apply(LinkStateDelta(A, 9, True, ((E, 10),))) is ApplyResult.APPLIED  # full skips ahead
    assert dict(db.adjacency(A)) == {E: 10}  # replaced, not merged
    assert db.apply(LinkStateDelta(B, 1, True, ())) is ApplyResult.APPLIED
    assert db.origins() == [A, B]
    db.forget(A)
    db.forget(A)
    assert db.origins() == [B] and db.seq_of(A) is None and dict(db.adjacency(A)) == {}
    assert db.apply(LinkStateDelta(A, 1, True, ())) is ApplyResult.APPLIED  # forgotten: any seq


def signed(delta: LinkStateDelta) -> LinkStateDelta:
    return sign_delta(delta, KEY)


def test_signed_history_replays_and_is_bounded() -> None:
    db = LinkStateDatabase()
    local = LocalLinks(A, first_seq=1000)
    rng = random.Random(3)
    sent = []
    for _ in range(FULL_DELTA_EVERY + 10):  # crosses one periodic full delta
        links = {n: rng.choice((1000, 5000)) for n in rng.sample(range(2, 12), rng.randint(1, 5))}
        delta = local.update(links)
        if delta is not None:
            sent.append(signed(delta))
            assert db.apply(sent[-1]) is ApplyResult.APPLIED
    history = db.signed_history(A)
    assert history[0].full and not any(d.full for d in history[1:])
    assert history == sent[-len(history) :]
    replica = LinkStateDatabase()
    public = ed25519_public(KEY)
    for delta in history:
        assert verify_delta(delta, public)
        assert replica.apply(delta) is ApplyResult.APPLIED
    assert dict(replica.adjacency(A)) == dict(db.adjacency(A)) == dict(local.advertised)
    assert not db.needs_full(A) and not db.needs_full(B)

    # An origin that never sends a full delta again: past MAX_HISTORY the proof is dropped.
    db = LinkStateDatabase()
    db.apply(signed(LinkStateDelta(A, 1, True, ())))
    for seq in range(2, MAX_HISTORY + 2):
        db.apply(signed(LinkStateDelta(A, seq, False, ((B, seq),))))
    assert len(db.signed_history(A)) == MAX_HISTORY + 1 and not db.needs_full(A)
    assert db.apply(signed(LinkStateDelta(A, MAX_HISTORY + 2, False, ((C, 1),)))) is ApplyResult.APPLIED
    assert db.signed_history(A) == [] and db.needs_full(A)
    assert dict(db.adjacency(A)) == {B: MAX_HISTORY + 1, C: 1}  # the adjacency itself is kept
    assert db.apply(signed(LinkStateDelta(A, MAX_HISTORY + 3, False, ((C, 0),)))) is ApplyResult.APPLIED
    assert db.needs_full(A)
    assert db.apply(signed(LinkStateDelta(A, MAX_HISTORY + 4, True, ((D, 5),)))) is ApplyResult.APPLIED
    assert not db.needs_full(A) and len(db.signed_history(A)) == 1


# -- signatures ------------------------------------------------------------------------------


def test_signature_verifies_and_catches_tampering() -> None:
    delta = signed(LinkStateDelta(A, 42, False, ((C, 300), (B, 0))))
    public = ed25519_public(KEY)
    assert verify_delta(delta, public)
    assert not verify_delta(delta, ed25519_public(OTHER_KEY))
    flipped = bytearray(delta.signature)
    flipped[10] ^= 1
    tampered = [
        LinkStateDelta(A, 42, False, delta.links, bytes(flipped)),
        LinkStateDelta(A, 43, False, delta.links, delta.signature),
        LinkStateDelta(B, 42, False, delta.links, delta.signature),
        LinkStateDelta(A, 42, True, delta.links, delta.signature),
        LinkStateDelta(A, 42, False, ((C, 301), (B, 0)), delta.signature),
        LinkStateDelta(A, 42, False, ((C, 300),), delta.signature),
        LinkStateDelta(A, 42, False, delta.links, b""),
        LinkStateDelta(A, 42, False, delta.links, delta.signature[:63]),
    ]
    assert not any(verify_delta(t, public) for t in tampered)
    reordered = LinkStateDelta(A, 42, False, ((B, 0), (C, 300)), delta.signature)
    assert verify_delta(reordered, public)  # the signed form sorts the pairs


def test_signing_bytes_layout() -> None:
    data = delta_signing_bytes(LinkStateDelta(0x01020304, 5, True, ((9, 7), (8, 6))))
    assert data == (
        b"naas-lsd/1"
        + bytes.fromhex("010203040000000000000005010002")
        # sorted pairs
        + bytes.fromhex("00000008000000060000000900000007")
    )


# -- JSON form ---------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    delta = signed(LinkStateDelta(A, 2**64 - 1, False, ((C, 0), (B, MAX_COST))))
    obj = json.loads(json.dumps(encode_delta(delta)))
    assert decode_delta_untrusted(obj) == delta
    full = signed(LinkStateDelta(A, 1, True, tuple((n, 1) for n in range(2, MAX_LINKS + 2))))
    assert decode_delta_untrusted(json.loads(json.dumps(encode_delta(full)))) == full


GOOD: dict[str, Any] = encode_delta(signed(LinkStateDelta(A, 3, False, ((B, 10), (C, 0)))))


@pytest.mark.parametrize(
    "change",
    [
        {"origin": 0},
        {"origin": 2**32},
        {"origin": True},
        {"origin": "1"},
        {"seq": 0},
        {"seq": 2**64},
        {"seq": 1.0},
        {"full": 1},
        {"links": [[B, 10], [B, 20]]},
        {"links": [[A, 10]]},
        {"links": [[B, -1]]},
        {"links": [[B, MAX_COST + 1]]},
        {"links": [[B, True]]},
        {"links": [[B]]},
        {"links": [[B, 1, 2]]},
        {"links": [{"n": B}]},
        {"links": {"2": 10}},
        {"links": [[n, 1] for n in range(2, MAX_LINKS + 3)]},
        {"full": True, "links": [[B, 0]]},
        {"signature": ""},
        {"signature": None},
        {"signature": "!!!"},
        {"signature": GOOD["signature"] + "AA"},
    ],
)
def test_decode_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(BadPacket) as info:
        decode_delta_untrusted({**GOOD, **change})
    assert info.value.reason is DropReason.BAD_CONTROL


@pytest.mark.parametrize("key", ["origin", "seq", "full", "links", "signature"])
def test_decode_rejects_missing_field(key: str) -> None:
    with pytest.raises(BadPacket):
        decode_delta_untrusted({k: v for k, v in GOOD.items() if k != key})


ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1, 2, 3, 2**32, 2**64, 1.5, "", "x", "AA", [], {}, [[]]]


def mutate(rng: random.Random, obj: Any) -> Any:
    """Replace, drop or add one thing somewhere inside ``obj`` (a JSON value)."""
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        key = rng.choice(sorted(obj))
        action = rng.randrange(3)
        if action == 0:
            del obj[key]
        elif action == 1:
            obj[key] = mutate(rng, obj[key])
        else:
            obj[rng.choice(["extra", "origin", "links"])] = rng.choice(ODD_VALUES)
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        index = rng.randrange(len(obj))
        action = rng.randrange(3)
        if action == 0:
            del obj[index]
        elif action == 1:
            obj[index] = mutate(rng, obj[index])
        else:
            obj.insert(index, copy.deepcopy(rng.choice([*ODD_VALUES, obj[index]])))
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool) and rng.random() < 0.5:
        return obj + rng.choice((-1, 1, 2**32, -(2**32), MAX_COST))
    if isinstance(obj, str) and rng.random() < 0.5:
        position = rng.randrange(len(obj) + 1)
        return obj[:position] + rng.choice("A_-=é!") + obj[position + 1 :]
    return rng.choice(ODD_VALUES)


def test_decode_fuzz() -> None:
    rng = random.Random(2024)
    base = encode_delta(signed(LinkStateDelta(A, 9, True, ((B, 10), (C, 20), (D, MAX_COST)))))
    outcomes = {"value": 0, "bad": 0}
    for _ in range(2000):
        obj = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            obj = mutate(rng, obj)
        try:
            result = decode_delta_untrusted(obj)
        except BadPacket as exc:
            assert exc.reason is DropReason.BAD_CONTROL
            outcomes["bad"] += 1
        else:
            assert isinstance(result, LinkStateDelta)
            assert decode_delta_untrusted(encode_delta(result)) == result
            outcomes["value"] += 1
    assert outcomes["value"] > 50 and outcomes["bad"] > 500


# -- this node's own links -------------------------------------------------------------------


def test_local_links_first_delta_is_full_then_changes_only() -> None:
    local = LocalLinks(A, first_seq=1_700_000_000_000)
    assert local.update({}) is None  # nothing to say yet
    first = local.update({C: 5000, B: 1000})
    assert first == LinkStateDelta(A, 1_700_000_000_000, True, ((B, 1000), (C, 5000)))
    assert local.update({B: 1000, C: 5000}) is None
    assert local.update({B: 1000}) == LinkStateDelta(A, 1_700_000_000_001, False, ((C, 0),))
    assert local.update({B: 1000, D: 0}) == LinkStateDelta(A, 1_700_000_000_002, False, ((D, 1),))
    assert local.full_delta() == LinkStateDelta(A, 1_700_000_000_003, True, ((B, 1000), (D, 1)))
    assert local.last_seq == 1_700_000_000_003
    with pytest.raises(ValueError):
        local.update({A: 10})
    with pytest.raises(ValueError):
        LocalLinks(A, first_seq=0)


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        (10_000, 11_500, False),  # 15%, 1.5 ms: jitter
        (10_000, 8_500, False),
        (10_000, 11_999, False),
        (10_000, 12_000, True),  # 20% (and 2 ms)
        (100_000, 101_999, False),  # 2%, just under 2 ms
        (100_000, 102_000, False),  # 2 ms alone is not enough on a 100 ms link
        (100_000, 120_000, True),
        (500, 599, False),  # 19.8%
        (500, 600, False),  # 20% alone is not enough on a LAN link: jitter
        (500, 3_000, True),
    ],
)
def test_local_links_hysteresis(old: int, new: int, changed: bool) -> None:
    local = LocalLinks(A, first_seq=1)
    local.update({B: old})
    delta = local.update({B: new})
    assert (delta is not None) is changed
    if delta is not None:
        assert delta == LinkStateDelta(A, 2, False, ((B, new),))
    assert local.advertised[B] == (new if changed else old)


def test_local_links_slow_drift_is_reported_once_it_adds_up() -> None:
    local = LocalLinks(A, first_seq=1)
    local.update({B: 10_000})
    deltas = [local.update({B: 10_000 + 500 * step}) for step in range(1, 9)]
    assert [d is not None for d in deltas] == [False, False, False, True, False, False, False, False]


def test_local_links_periodic_full_and_outrun() -> None:
    local = LocalLinks(A, first_seq=1)
    kinds = []
    for step in range(3 * FULL_DELTA_EVERY):
        delta = local.update({B: 1000 * (1 + step % 2) * 3})  # flips between 3 and 6 ms
        assert delta is not None
        kinds.append(delta.full)
    assert [i for i, full in enumerate(kinds) if full] == [0, FULL_DELTA_EVERY, 2 * FULL_DELTA_EVERY]
    seq = local.last_seq
    assert local.outrun(seq - 5) is None
    again = local.outrun(seq + 1000)  # an older life of ours had gone further
    assert again is not None and again.full and again.seq == seq + 1001
    assert local.update({B: 1000}) == LinkStateDelta(A, seq + 1002, False, ((B, 1000),))


def test_database_follows_local_links_through_random_changes() -> None:
    rng = random.Random(11)
    local = LocalLinks(A, first_seq=77)
    db = LinkStateDatabase()
    for _ in range(500):
        links = {n: rng.choice((100, 900, 2000, 30_000, 10**9)) for n in rng.sample(range(2, 30), 6)}
        delta = local.update(links)
        if delta is not None:
            assert db.apply(signed(delta)) is ApplyResult.APPLIED
        assert dict(db.adjacency(A)) == dict(local.advertised)
        assert set(local.advertised) == set(links)
        assert all(1 <= cost <= MAX_COST for cost in local.advertised.values())
