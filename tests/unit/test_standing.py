"""Standing links (core/standing.py): the pair score, the wanted degree and threshold,
and the graph ``standing_pairs`` builds: full up to the full-mesh limit, past it a
connected graph of about ``standing_degree(N)`` links a member, a small diameter, and
little churn when one member joins.
"""

from __future__ import annotations

import itertools
from collections import deque
from functools import cache

import pytest

from naas.core.standing import (
    FULL_MESH_UP_TO,
    pair_score,
    standing_degree,
    standing_pairs,
    standing_threshold,
)

Pairs = frozenset[tuple[int, int]]
Adjacency = dict[int, set[int]]


@cache
def pairs_of(members: int) -> Pairs:
    """Standing pairs of the mesh 1..members (cached: 1000 members cost ~0.5 s)."""
    return frozenset(standing_pairs(list(range(1, members + 1))))


def adjacency(members: int) -> Adjacency:
    graph: Adjacency = {node: set() for node in range(1, members + 1)}
    for a, b in pairs_of(members):
        graph[a].add(b)
        graph[b].add(a)
    return graph


def hops_from(graph: Adjacency, source: int) -> dict[int, int]:
    """Breadth-first search: hop count to every node reachable from ``source``."""
    hops = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for neighbour in graph[node]:
            if neighbour not in hops:
                hops[neighbour] = hops[node] + 1
                queue.append(neighbour)
    return hops


# -- pair_score ------------------------------------------------------------------------------


def test_pair_score_is_symmetric_deterministic_and_in_unit_interval() -> None:
    for a, b in itertools.combinations([1, 2, 3, 17, 1000, 65_535, 0xFFFFFFFF], 2):
        score = pair_score(a, b)
        assert 0.0 <= score < 1.0
        assert pair_score(b, a) == score
        assert pair_score(a, b) == score


def test_pair_scores_differ_across_pairs_and_look_uniform() -> None:
    scores = [pair_score(a, b) for a, b in itertools.combinations(range(1, 101), 2)]
    assert len(set(scores)) == len(scores)
    assert abs(sum(scores) / len(scores) - 0.5) < 0.02
    assert sum(s < 0.1 for s in scores) / len(scores) == pytest.approx(0.1, abs=0.02)


# -- degree and threshold --------------------------------------------------------------------


def test_standing_degree_never_exceeds_the_other_members() -> None:
    for members in range(1, 3000):
        assert 0 <= standing_degree(members) <= members - 1
    assert standing_degree(1000) == pytest.approx(17.8, abs=0.05)  # 2 ln 1000 + 4, as the docstring says


@pytest.mark.parametrize("members", [1, 2, 3, 10, FULL_MESH_UP_TO])
def test_full_mesh_up_to_the_limit(members: int) -> None:
    assert standing_threshold(members) == 1.0
    assert pairs_of(members) == frozenset(itertools.combinations(range(1, members + 1), 2))


def test_full_mesh_limit_is_a_parameter() -> None:
    ids = list(range(1, 21))
    assert standing_threshold(20, full_mesh_up_to=20) == 1.0
    assert len(standing_pairs(ids, full_mesh_up_to=20)) == 20 * 19 // 2
    assert standing_threshold(20, full_mesh_up_to=10) == standing_degree(20) / 19 < 1.0
    assert len(standing_pairs(ids, full_mesh_up_to=10)) < 20 * 19 // 2


def test_past_the_limit_the_threshold_is_degree_over_others() -> None:
    members = FULL_MESH_UP_TO + 1
    assert standing_threshold(members) == standing_degree(members) / (members - 1) < 1.0
    assert len(pairs_of(members)) < members * (members - 1) // 2


def test_standing_pairs_ignores_input_order_and_lists_low_high() -> None:
    ids = list(range(1, 101))
    assert frozenset(standing_pairs(ids[::-1])) == pairs_of(100)
    assert all(a < b for a, b in pairs_of(100))
    assert all(pair_score(a, b) < standing_threshold(100) for a, b in pairs_of(100))


# -- the standing graph past the limit -------------------------------------------------------


@pytest.mark.parametrize("members", [100, 300, 1000])
def test_mean_degree_is_close_to_the_wanted_degree(members: int) -> None:
    mean = 2 * len(pairs_of(members)) / members
    assert mean == pytest.approx(standing_degree(members), rel=0.25)


@pytest.mark.parametrize("members", [100, 300, 1000])
def test_standing_graph_is_connected(members: int) -> None:
    graph = adjacency(members)
    assert all(graph.values()), "an isolated member"
    assert len(hops_from(graph, 1)) == members


@pytest.mark.parametrize("members", [300, 1000])
def test_standing_graph_has_a_small_diameter(members: int) -> None:
    graph = adjacency(members)
    for source in (1, members // 3, members // 2, members):
        assert 2 <= max(hops_from(graph, source).values()) <= 5


# -- churn -----------------------------------------------------------------------------------


def churn_when_one_joins(members: int) -> tuple[int, int]:
    """(existing pairs added or dropped, pairs of the newcomer) for members -> members + 1."""
    before, after = pairs_of(members), pairs_of(members + 1)
    own = {pair for pair in after if members + 1 in pair}
    return len((after - own) ^ before), len(own)


@pytest.mark.parametrize("members", [100, 300])
def test_one_member_joining_changes_few_existing_pairs(members: int) -> None:
    changed, own = churn_when_one_joins(members)
    assert changed < 3 * standing_degree(members)
    assert own > 0


@pytest.mark.parametrize("size", [148, 403, 1096])
def test_churn_stays_small_where_ln_n_crosses_a_whole_number(size: int) -> None:
    changed, _ = churn_when_one_joins(size)
    assert changed < 3 * standing_degree(size)
