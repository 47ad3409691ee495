"""Many real NodeCores on the discrete-event simulator converge to the same, correct routes.

30 members on three sites, bootstrapped from two PoPs only (like enrollment):

    onprem (0.2 ms inside)        aws                      alibaba
    master*  onprem-1 ...  <-- 10-40 ms -->  slave*  aws-1 ...  <-- 10-40 ms -->  alibaba-1 ...
    (* PoP: the only records a member starts with; gossip teaches it the rest)

Every pair is linked on the underlay (site latencies are drawn independently, so some
cross-site pairs route through a third site even at rest). We cut onprem-1 <-> alibaba-1,
then crash the member that relays between them (they must find another). After each fault
the checker (Simulator.problems) must find nothing: a route from every live member to every
other, next hops that are live direct neighbours, next-hop chains that reach the
destination without loops within 8 hops, nothing through the cut or the crashed member,
and one identical link-state database everywhere.
"""

from __future__ import annotations

from naas.lab.simulator import Simulator

SITES = ("onprem", "aws", "alibaba")
MEMBERS = 30


def build(members: int, seed: int = 3) -> Simulator:
    sim = Simulator(seed)
    sim.add_node("master", "onprem", pop=True)
    sim.add_node("slave", "aws", pop=True)
    for i in range(members - 2):
        site = SITES[i % len(SITES)]
        sim.add_node(f"{site}-{i // len(SITES) + 1}", site)
    return sim


def next_hops(sim: Simulator) -> set[int]:
    return {hop for node in sim.live() for hop in sim.routes_of(node.name).values()}


def test_thirty_members_converge_reroute_around_a_cut_and_forget_a_crashed_member() -> None:
    sim = build(MEMBERS)
    took = sim.run_until_converged(timeout=30.0)
    assert took is not None, sim.problems()
    ids = {name: node.node_id for name, node in sim.nodes.items()}
    assert all(len(sim.routes_of(name)) == MEMBERS - 1 for name in sim.nodes)
    assert sim.routes_of("onprem-1")[ids["alibaba-1"]] == ids["alibaba-1"], "direct while the link is up"

    sim.cut("onprem-1", "alibaba-1")
    assert sim.problems(), "the checker sees the routes over the cut link"
    sim.run(10.0)
    assert sim.problems() == []
    via_a = sim.routes_of("onprem-1")[ids["alibaba-1"]]
    via_b = sim.routes_of("alibaba-1")[ids["onprem-1"]]
    assert via_a not in (ids["onprem-1"], ids["alibaba-1"]), "through a third member"
    assert via_b not in (ids["onprem-1"], ids["alibaba-1"]), "through a third member"

    crashed = via_a
    sim.crash(sim.name_of(crashed))
    sim.run(10.0)
    assert sim.problems() == []
    assert crashed not in next_hops(sim), "nobody routes through the crashed member"
    assert all(crashed not in sim.routes_of(node.name) for node in sim.live()), "routes to it are gone"
    assert sim.routes_of("onprem-1")[ids["alibaba-1"]] not in (crashed, ids["alibaba-1"]), "another relay"


def test_a_small_run_is_deterministic_and_its_counters_add_up() -> None:
    first, second = build(5, seed=9), build(5, seed=9)
    for sim in (first, second):
        assert sim.run_until_converged(timeout=10.0) is not None
        sim.run(5.0)
    assert first.control_bytes() == second.control_bytes() > 0
    assert first.control_packets() == second.control_packets()
    received = sum(node.rx_bytes for node in first.live())
    assert received <= first.control_bytes(), "lost or still in flight, never more"


def test_loss_and_a_restored_link_still_converge_to_direct_routes() -> None:
    sim = Simulator(4, loss=0.02, jitter=0.002)
    sim.add_node("master", "onprem", pop=True)
    for i in range(5):
        sim.add_node(f"m-{i}", SITES[i % len(SITES)])
    assert sim.run_until_converged(timeout=20.0) is not None, sim.problems()
    target = sim.nodes["m-1"].node_id
    sim.cut("m-0", "m-1")
    sim.run(10.0)
    assert sim.run_until_converged(timeout=10.0) is not None, sim.problems()
    assert sim.routes_of("m-0")[target] != target
    sim.restore("m-0", "m-1")
    assert sim.run_until_converged(timeout=15.0) is not None, sim.problems()
    assert sim.routes_of("m-0")[target] == target, "direct again once the link is back"
