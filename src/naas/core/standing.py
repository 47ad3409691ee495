"""Which members keep a standing direct link, and which meet only when they talk.

Theory of operation. Up to ``full_mesh_up_to`` members (FULL_MESH_UP_TO by default) the
mesh is full: every member keeps a session to every other, probes it every second and
advertises the link. That costs each member O(N) probes a second and the link-state
database O(N^2) links, which stops being cheap somewhere past a hundred members. Past
that size each member keeps *standing* links only to a random-looking but agreed subset
of the others, and makes every other link *on demand*, the way Tailscale and ZeroTier
make paths: the first frame to a member starts a handshake (through a relay if the
direct path is not known to work), probes start, and the link goes direct; after
IDLE_LINK_AFTER seconds without unicast frames it is withdrawn from the link state and no
longer probed or rekeyed, and its sessions lapse.

Standing links form a random graph that every member can compute alone and that both
ends agree on without talking: the pair {a, b} is linked when

    pair_score(a, b) < standing_threshold(N)        pair_score: a hash of the pair, in [0, 1)

so each member has about ``standing_degree(N)`` = 2 ln N + 4 standing neighbours (17.8
at 1000 members). Such a graph is connected with probability about 1 - N e^-degree (the
chance of an isolated member; < 1e-4 at any size past the full-mesh limit) and has a
diameter of about ln N / ln degree (3 hops at 1000), well inside routing.MAX_HOPS.
The score depends only on the pair, and the threshold moves smoothly with N, so a member
that joins or leaves changes only the pairs whose score sits between the old and the new
threshold: a handful of links across the whole mesh, not a reshuffle (crossing the
full-mesh limit is the one big step). Members agree as long as they know the same N;
while gossip spreads a change, a pair close to the threshold may be one-sided for a few
seconds, and routing ignores one-sided links (core/routing.py).
"""

from __future__ import annotations

import math
import struct
from hashlib import blake2b

FULL_MESH_UP_TO = 64  # members (self included) up to which every pair keeps a link
IDLE_LINK_AFTER = 120.0  # seconds without unicast frames after which an on-demand link is withdrawn

_PAIR = struct.Struct("!II")
_SCALE = float(2**64)


def pair_score(a: int, b: int) -> float:
    """The pair's place in [0, 1): the same for (a, b) and (b, a), on every member."""
    low, high = (a, b) if a < b else (b, a)
    digest = blake2b(_PAIR.pack(low, high), digest_size=8, person=b"naas-standing").digest()
    return int.from_bytes(digest, "big") / _SCALE


def standing_degree(members: int) -> float:
    """Standing links per member wanted (on average) in a mesh of ``members``, self included."""
    return min(members - 1, 2 * math.log(max(members, 2)) + 4)


def standing_threshold(members: int, full_mesh_up_to: int = FULL_MESH_UP_TO) -> float:
    """Pairs scoring below this keep a standing link (1.0 or more: every pair)."""
    if members <= full_mesh_up_to or members <= 2:
        return 1.0
    return standing_degree(members) / (members - 1)


def standing_pairs(node_ids: list[int], full_mesh_up_to: int = FULL_MESH_UP_TO) -> set[tuple[int, int]]:
    """Every standing pair (low, high) of a mesh of ``node_ids``: the graph a converged
    mesh without traffic must show (the simulator checks members against it)."""
    ids = sorted(node_ids)
    threshold = standing_threshold(len(ids), full_mesh_up_to)
    return {
        (a, b)
        for i, a in enumerate(ids)
        for b in ids[i + 1 :]
        if threshold >= 1.0 or pair_score(a, b) < threshold
    }
