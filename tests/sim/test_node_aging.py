"""Members that went away age out of a member's view (core/node.py ``topology``).

    alpha -- bravo          both PoPs stop (every datagram to or from them is lost);
       \\    /               alpha and bravo keep talking to each other.
    master -- slave

What a user saw before: 50 s after the PoPs stopped, `naas status` still showed them
"connecting" with their old RTT, and the master-slave link stayed in the graph.
"""

from __future__ import annotations

from helpers import Authority, SimNet
from naas.core.topology import CONNECTING_FOR, Reach


def build() -> SimNet:
    ca = Authority()
    network = ca.network()
    net = SimNet()
    net.add("alpha", ca.identity("alpha", 2, "10.77.1.2/16"), network)
    net.add("bravo", ca.identity("bravo", 3, "10.77.1.3/16"), network)
    net.add("master", ca.identity("master", 1, "10.77.0.1/16", pop=True), network)
    net.add("slave", ca.identity("slave", 4, "10.77.0.4/16", pop=True), network)
    for name in ("alpha", "bravo", "slave"):
        net.cores[name]._learn_member(net.record("master"), net.now, gossip=False)
    return net


def test_stopped_pops_age_out_of_the_view_and_their_link_with_them() -> None:
    net = build()
    net.run(4.0)
    alpha = net.cores["alpha"]
    ids = {name: core.node_id for name, core in net.cores.items()}
    view = alpha.topology(net.now)
    assert {m.name: m.reach for m in view.members} == {
        "alpha": Reach.SELF,
        "bravo": Reach.DIRECT,
        "master": Reach.DIRECT,
        "slave": Reach.DIRECT,
    }
    pop_link = tuple(sorted((ids["master"], ids["slave"])))
    assert pop_link in {(link.a, link.b) for link in view.links}
    for pop in ("master", "slave"):
        for other in net.cores:
            if other != pop:
                net.cut.add(frozenset((pop, other)))
    net.run(6.0 + CONNECTING_FOR + 4.0)
    view = alpha.topology(net.now)
    members = {m.name: m for m in view.members}
    assert members["bravo"].reach is Reach.DIRECT and members["bravo"].rtt_ms is not None
    for pop in ("master", "slave"):
        assert members[pop].reach is Reach.UNREACHABLE, members[pop]
        assert members[pop].rtt_ms is None, "no old RTT for a member that went away"
    links = {(link.a, link.b) for link in view.links}
    assert links == {tuple(sorted((ids["alpha"], ids["bravo"])))}, "the PoPs' own link is gone too"
