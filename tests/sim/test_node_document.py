"""The network document through a simulated mesh: a new version reaches every member,
a revoked member is cut off everywhere, groups change without re-enrollment.

    pop-a  pop-b          (site 0)        the document enters at pop-a, as from its store;
    m1 m2 m3 m4 m5        (sites 1-2)     m5 is revoked; m4 is offline while it happens
"""

from __future__ import annotations

from naas.core.network_document import DOCUMENT_NODE, make_document
from naas.core.wire import DropReason
from naas.lab.simulator import EPOCH_UNIX, NETWORK, START, Simulator
from naas.pop.ca import issue_certificate


def _mesh(seed: int = 3) -> Simulator:
    sim = Simulator(seed)
    sim.add_node("pop-a", "site-0", pop=True)
    sim.add_node("pop-b", "site-0", pop=True)
    for index in range(1, 6):
        sim.add_node(f"m{index}", f"site-{1 + index % 2}")
    sim.run(15.0)
    return sim


def _holders(sim: Simulator, version: int) -> set[str]:
    return {
        node.name
        for node in sim.live()
        if node.core.document is not None and node.core.document.version == version
    }


def _time_until_everyone_holds(sim: Simulator, version: int, names: set[str], limit: float) -> float | None:
    started = sim.now
    while sim.now - started < limit:
        if names <= _holders(sim, version):
            return sim.now - started
        sim.run(0.05)
    return None


def test_revocation_reaches_every_member_within_two_seconds_and_cuts_the_member_off() -> None:
    sim = _mesh()
    m5 = sim.nodes["m5"]
    m5_id = m5.node_id
    everyone = set(sim.nodes)
    sim.publish_document("pop-a", 1, revoke=("m5",), groups={sim.nodes["m1"].node_id: ("db", "web")})
    took = _time_until_everyone_holds(sim, 1, everyone, 2.0)
    assert took is not None, f"after 2 s only {_holders(sim, 1)} hold version 1"
    sim.run(1.0)
    for node in sim.live():
        if node.name == "m5":
            continue
        core = node.core
        assert m5_id not in core.peers, f"{node.name} still knows m5"
        view = core.topology(sim.now)
        assert "m5" not in {member.name for member in view.members}
        assert view.revoked == ((m5_id, "m5"),) and view.document_version == 1
        m1 = next(member for member in view.members if member.name == "m1")
        assert m1.groups == ("db", "web"), f"{node.name} sees m1 in {m1.groups}"
    assert m5.core.revoked, "the revoked member learned it was revoked (its agent stops)"
    pop_view = sim.nodes["pop-a"].core.topology(sim.now)
    assert {m.name: m.document_version for m in pop_view.members[1:]} == {
        name: 1 for name in everyone if name not in ("pop-a", "m5")
    }, "the PoP knows which version each member holds"


def test_a_revoked_member_is_refused_handshakes_and_relaying() -> None:
    sim = _mesh(seed=4)
    m5, m1, m2 = sim.nodes["m5"], sim.nodes["m1"], sim.nodes["m2"]
    sim.cut("m5", "m1")  # m5 reaches m1 only through another member
    sim.run(10.0)
    sim.publish_document("pop-a", 1, revoke=("m5",))
    sim.run(3.0)
    before = sum(node.core.drops[DropReason.REVOKED] for node in sim.live())
    # m5 keeps going (a machine that ignores its revocation): frames, rekeys, relays
    for _ in range(40):
        sim.send_frame("m5", "m1")
        sim.send_frame("m5", "m2")
        sim.run(0.5)
    refused = sum(node.core.drops[DropReason.REVOKED] for node in sim.live()) - before
    assert refused > 0, "handshakes or relayed datagrams of m5 were refused"
    for name in ("m1", "m2"):
        assert m5.node_id not in sim.nodes[name].core.peers
    frames_before = m1.frames_out + m2.frames_out
    sim.run(5.0)
    for _ in range(10):
        sim.send_frame("m5", "m1")
    sim.run(2.0)
    assert m1.frames_out + m2.frames_out == frames_before, "nothing m5 sends reaches a member"


def test_a_member_offline_gets_the_document_from_members_when_the_pops_are_gone() -> None:
    sim = _mesh(seed=5)
    for other in sim.nodes:
        if other != "m4":
            sim.cut("m4", other)
    sim.publish_document("pop-a", 1, revoke=("m5",))
    sim.run(3.0)
    assert "m4" not in _holders(sim, 1)
    sim.crash("pop-a")
    sim.crash("pop-b")
    for other in sim.nodes:
        if other != "m4":
            sim.restore("m4", other)
    took = _time_until_everyone_holds(sim, 1, {"m4"}, 30.0)
    assert took is not None, "m4 got the document from the members"
    sim.run(2.0)
    assert sim.nodes["m5"].node_id not in sim.nodes["m4"].core.peers


def test_only_a_newer_document_signed_by_the_ca_is_taken() -> None:
    sim = _mesh(seed=6)
    m1 = sim.nodes["m1"].core
    sim.publish_document("pop-a", 2)
    sim.run(2.0)
    assert m1.document is not None and m1.document.version == 2
    older = make_document(sim._ca_private, network=NETWORK, version=1, issued_at=0, groups={}, revoked=())
    assert not m1.document_received(older.body, sim.now), "an older version changes nothing"
    forged = make_document(b"\x01" * 32, network=NETWORK, version=9, issued_at=0, groups={}, revoked=())
    assert not m1.document_received(forged.body, sim.now)
    assert m1.drops[DropReason.BAD_DOCUMENT] == 1 and m1.document.version == 2
    assert (DOCUMENT_NODE, 2) in m1.membership.versions()


def test_a_renewed_certificate_reaches_every_member_and_keeps_the_sessions() -> None:
    sim = _mesh(seed=7)
    m2 = sim.nodes["m2"].core
    old = m2.identity.certificate
    renewed = issue_certificate(
        sim._ca_private,
        network=NETWORK,
        name=old.name,
        node_id=old.node_id,
        is_pop=False,
        static_public=old.static_public,
        signing_public=old.signing_public,
        ip=old.ip,
        groups=("renewed",),
        now=EPOCH_UNIX + int(sim.now - START),  # the simulated wall clock
        days=30,
    )
    others = [node for node in sim.live() if node.name != "m2"]
    handshakes_before = {node.name: node.core.peers[old.node_id].stats.handshakes for node in others}
    assert m2.certificate_renewed(renewed, sim.now)
    assert not m2.certificate_renewed(old, sim.now), "never back to an older one"
    sim.run(2.0)
    for node in others:
        peer = node.core.peers[old.node_id]
        assert peer.certificate == renewed, f"{node.name} holds the renewed certificate"
        assert peer.stats.handshakes == handshakes_before[node.name], "no new handshake for a renewal"
