"""Past the full-mesh size: standing links only, and on-demand links while frames flow.

30 members with ``full_mesh_up_to=8`` run the same code a 1000-member mesh runs at the
default limit (core/standing.py): each keeps standing links to a few others, agreed by
both ends without talking, and reaches the rest through them; a pair that exchanges
frames gets a direct link, which goes away again once the frames stop.

Bootstrapped from the two PoPs only (like enrollment), so the members first form a full
mesh with the PoPs, then learn everyone by gossip and drop to the standing graph.
"""

from __future__ import annotations

from naas.core.standing import IDLE_LINK_AFTER
from naas.lab.simulator import Simulator

SITES = ("onprem", "aws", "alibaba")
MEMBERS = 30
FULL_MESH_UP_TO = 8


def build(seed: int = 5) -> Simulator:
    sim = Simulator(seed, full_mesh_up_to=FULL_MESH_UP_TO)
    sim.add_node("master", "onprem", pop=True)
    sim.add_node("slave", "aws", pop=True)
    for i in range(MEMBERS - 2):
        site = SITES[i % len(SITES)]
        sim.add_node(f"{site}-{i // len(SITES) + 1}", site)
    took = sim.run_until_converged(timeout=30.0)
    assert took is not None, sim.problems()
    return sim


def relayed_pairs(sim: Simulator) -> list[tuple[str, str]]:
    """Pairs whose route goes through another member (no standing link between them)."""
    pairs = []
    for node in sim.live():
        for dst, hop in sim.routes_of(node.name).items():
            if hop != dst and node.node_id < dst:
                pairs.append((node.name, sim.name_of(dst)))
    return pairs


def test_sparse_mesh_reaches_everyone_reroutes_around_a_cut_and_a_crash() -> None:
    sim = build()
    degrees = [len(sim.true_neighbours(node)) for node in sim.live()]
    assert max(degrees) < MEMBERS - 1, "not a full mesh"
    assert all(len(sim.routes_of(node.name)) == MEMBERS - 1 for node in sim.live()), "a route to everyone"
    assert relayed_pairs(sim), "some pairs go through another member"
    for node in sim.live():
        links = sim.nodes[node.name].core.routes.neighbours_of(node.node_id)
        assert set(links) == sim.true_neighbours(node), f"{node.name} advertises its standing links only"

    ids = {name: node.node_id for name, node in sim.nodes.items()}
    a = "onprem-1"
    b = sim.name_of(min(sim.true_neighbours(sim.nodes[a])))
    sim.cut(a, b)
    took = sim.run_until_converged(timeout=10.0, interval=0.1)
    assert took is not None, sim.problems()
    via = sim.routes_of(a)[ids[b]]
    assert via != ids[b], "through another member after the cut"

    sim.crash(sim.name_of(via))
    took = sim.run_until_converged(timeout=10.0, interval=0.1)
    assert took is not None, sim.problems()
    assert sim.routes_of(a)[ids[b]] not in (via, ids[b]), "around the crashed relay"


def test_frames_make_a_direct_link_on_demand_that_lapses_when_idle() -> None:
    sim = build()
    src, dst = relayed_pairs(sim)[0]
    src_id, dst_id = sim.nodes[src].node_id, sim.nodes[dst].node_id
    before = sim.nodes[dst].frames_out

    for _ in range(25):  # 5 s of frames, one every 0.2 s
        sim.send_frame(src, dst)
        sim.run(0.2)
    assert sim.nodes[dst].frames_out - before >= 24, "frames arrive, at most the first one queued"
    sim.run(1.0)
    assert sim.routes_of(src)[dst_id] == dst_id, "direct while frames flow"
    assert sim.routes_of(dst)[src_id] == src_id, "the receiver links back too"
    status = {p["name"]: p["path"] for p in sim.nodes[src].core.status(sim.now)["peers"]}
    assert status[dst] == "direct"

    sim.run(IDLE_LINK_AFTER + 10.0)
    assert sim.routes_of(src)[dst_id] != dst_id, "the idle on-demand link is gone"
    assert sim.problems() == [], "back to the standing graph everywhere"
    status = {p["name"]: p["path"] for p in sim.nodes[src].core.status(sim.now)["peers"]}
    assert status[dst] in ("idle", "via " + sim.name_of(sim.routes_of(src)[dst_id]))
