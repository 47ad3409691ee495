"""The policy and port security on simulated members: who may talk to whom, decided by
the receiver from the session's identity, kept per connection, changed live.

    pop-a              (site 0)    the document enters here, as from the PoPs' store
    ops-1   web-1      (site 1)    groups ops / web
    guest   db-1       (site 2)    no group / db

Frames are built by hand (Ethernet, IPv4, TCP/UDP/ICMP headers; checksums are not the
core's business) and sent from a member's naas0; what the receiver's naas0 gets is
recorded. The members are layer 2 only (no overlay addresses).
"""

from __future__ import annotations

import struct
from typing import Any

from naas.core.wire import DropReason
from naas.lab.simulator import Simulator
from naas.model.policy import parse_policy

SSH_ONLY = {
    "default": "deny",
    "rule": [
        {
            "name": "ssh-from-ops",
            "from": ["group:ops"],
            "to": ["group:web"],
            "proto": "tcp",
            "ports": ["22"],
            "action": "allow",
        },
        {
            "name": "dns",
            "from": ["any"],
            "to": ["group:db"],
            "proto": "udp",
            "ports": ["53"],
            "action": "allow",
        },
        {"name": "ping-web", "from": ["any"], "to": ["group:web"], "proto": "icmp", "action": "allow"},
        {
            "name": "lab-protocol",
            "from": ["any"],
            "to": ["any"],
            "proto": "ethertype:0x88b5",
            "action": "allow",
        },
    ],
}
IPS = {"ops-1": "172.32.0.11", "web-1": "172.32.0.12", "guest": "172.32.0.13", "db-1": "172.32.0.14"}


def _ip(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def ipv4_frame(
    sim: Simulator, src: str, dst: str, proto: int, l4: bytes, *, src_mac: bytes | None = None
) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, _ip(IPS[src]), _ip(IPS[dst])
    )
    mac_src = src_mac if src_mac is not None else sim.nodes[src].core.mac
    return sim.nodes[dst].core.mac + mac_src + b"\x08\x00" + header + l4


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"ping"


def echo(kind: int, ident: int) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"x" * 16


SYN, SYN_ACK, ACK = 0x02, 0x12, 0x10


def _mesh(seed: int = 5) -> Simulator:
    sim = Simulator(seed)
    sim.add_node("pop-a", "site-0", pop=True)
    sim.add_node("ops-1", "site-1", groups=("ops",))
    sim.add_node("web-1", "site-1", groups=("web",))
    sim.add_node("guest", "site-2")
    sim.add_node("db-1", "site-2", groups=("db",))
    sim.run(15.0)
    return sim


def _publish(sim: Simulator, version: int, policy: dict[str, Any], **more: Any) -> None:
    sim.publish_document("pop-a", version, policy=parse_policy(policy), **more)
    sim.run(2.0)
    assert all(
        node.core.document is not None and node.core.document.version == version for node in sim.live()
    )


def _delivered(sim: Simulator, dst: str, frame: bytes) -> bool:
    written = sim.nodes[dst].written
    assert written is not None
    return any(item.endswith(frame[12:]) and item[6:12] == frame[6:12] for item in written)


def _send(sim: Simulator, src: str, frame: bytes) -> None:
    sim.send_raw_frame(src, frame)
    sim.run(0.2)


def test_default_deny_drops_everything_and_counts_it_under_default_at_the_receiver() -> None:
    sim = _mesh()
    _publish(sim, 1, {"default": "deny"})
    web = sim.record_frames("web-1")
    guest = sim.nodes["guest"].core
    guest.firewall.egress = False  # a member that skips its own check: the receiver's counts
    for port in (22, 80, 443):
        _send(sim, "guest", ipv4_frame(sim, "guest", "web-1", 6, tcp(40000 + port, port, SYN)))
    _send(sim, "guest", ipv4_frame(sim, "guest", "web-1", 1, echo(8, 7)))
    assert web == []
    status = sim.nodes["web-1"].core.status(sim.now)
    assert status["policy"]["denied_in"] == {"default": 4}
    assert status["drops"]["policy_denied"] == 4
    # with its own check on, the sender keeps them off the underlay and counts them itself
    guest.firewall.egress = True
    sent = sim.nodes["guest"].tx_packets
    _send(sim, "guest", ipv4_frame(sim, "guest", "web-1", 6, tcp(41000, 22, SYN)))
    assert guest.firewall.denied_out["default"] == 1
    assert sim.nodes["guest"].tx_packets - sent <= 2  # probes at most, not the SYN
    assert sim.nodes["web-1"].core.firewall.denied_in["default"] == 4


def test_a_group_rule_allows_its_flow_and_the_replies_but_no_new_connection_back() -> None:
    sim = _mesh()
    _publish(sim, 1, SSH_ONLY)
    web, ops = sim.record_frames("web-1"), sim.record_frames("ops-1")
    syn = ipv4_frame(sim, "ops-1", "web-1", 6, tcp(50000, 22, SYN))
    _send(sim, "ops-1", syn)
    assert _delivered(sim, "web-1", syn)
    assert sim.nodes["web-1"].core.firewall.hits["ssh-from-ops"] == 1
    syn_ack = ipv4_frame(sim, "web-1", "ops-1", 6, tcp(22, 50000, SYN_ACK))
    _send(sim, "web-1", syn_ack)
    assert _delivered(sim, "ops-1", syn_ack), "the reply needs no rule"
    for _ in range(3):
        data = ipv4_frame(sim, "ops-1", "web-1", 6, tcp(50000, 22, ACK) + b"payload")
        _send(sim, "ops-1", data)
        assert _delivered(sim, "web-1", data)
    back = ipv4_frame(sim, "web-1", "ops-1", 6, tcp(50001, 22, SYN))
    sim.nodes["web-1"].core.firewall.egress = False
    _send(sim, "web-1", back)
    assert not _delivered(sim, "ops-1", back), "a new connection the other way is not a reply"
    assert sim.nodes["ops-1"].core.firewall.denied_in["default"] == 1
    # a member without the group: its SYNs time out, each one counted
    sim.nodes["guest"].core.firewall.egress = False
    for _ in range(3):
        _send(sim, "guest", ipv4_frame(sim, "guest", "web-1", 6, tcp(50100, 22, SYN)))
    assert sim.nodes["web-1"].core.firewall.denied_in["default"] == 3
    assert len(web) == 4 and len(ops) == 1


def test_udp_and_icmp_replies_and_an_icmp_error_of_a_permitted_flow_pass() -> None:
    sim = _mesh(seed=6)
    _publish(sim, 1, SSH_ONLY)
    sim.record_frames("guest")
    query = ipv4_frame(sim, "guest", "db-1", 17, udp(5353, 53))
    _send(sim, "guest", query)
    answer = ipv4_frame(sim, "db-1", "guest", 17, udp(53, 5353))
    _send(sim, "db-1", answer)
    assert _delivered(sim, "guest", answer)
    request = ipv4_frame(sim, "guest", "web-1", 1, echo(8, 99))
    _send(sim, "guest", request)
    reply = ipv4_frame(sim, "web-1", "guest", 1, echo(0, 99))
    _send(sim, "web-1", reply)
    assert _delivered(sim, "guest", reply)
    # db-1 says the port is unreachable, quoting the query: related to a permitted flow
    quoted = query[14 : 14 + 28]
    error = ipv4_frame(sim, "db-1", "guest", 1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
    _send(sim, "db-1", error)
    assert _delivered(sim, "guest", error)
    # an echo request the other way is a new flow: guest is in no group a rule lets in
    sim.nodes["web-1"].core.firewall.egress = False
    unasked = ipv4_frame(sim, "web-1", "guest", 1, echo(8, 100))
    _send(sim, "web-1", unasked)
    assert not _delivered(sim, "guest", unasked)


def test_non_ip_frames_need_a_rule_for_their_ethertype_and_vlan_tags_are_looked_through() -> None:
    sim = _mesh(seed=7)
    _publish(sim, 1, SSH_ONLY)
    db = sim.record_frames("db-1")
    sim.nodes["guest"].core.firewall.egress = False
    mac_dst, mac_src = sim.nodes["db-1"].core.mac, sim.nodes["guest"].core.mac
    allowed = mac_dst + mac_src + b"\x88\xb5" + b"lab" * 20
    refused = mac_dst + mac_src + b"\x88\xb6" + b"lab" * 20
    tagged_ok = mac_dst + mac_src + b"\x81\x00\x00\x07\x88\xb5" + b"lab" * 20
    tagged_ssh = (
        mac_dst
        + mac_src
        + b"\x81\x00\x00\x07\x08\x00"
        + ipv4_frame(sim, "guest", "db-1", 6, tcp(1, 22, SYN))[14:]
    )
    for frame in (allowed, refused, tagged_ok, tagged_ssh):
        _send(sim, "guest", frame)
    assert db == [allowed, tagged_ok]
    assert sim.nodes["db-1"].core.firewall.denied_in["default"] == 2


def test_a_rule_change_reaches_everyone_and_cuts_connections_no_longer_allowed() -> None:
    sim = _mesh(seed=8)
    _publish(sim, 1, SSH_ONLY)
    sim.record_frames("web-1")
    syn = ipv4_frame(sim, "ops-1", "web-1", 6, tcp(50000, 22, SYN))
    _send(sim, "ops-1", syn)
    assert _delivered(sim, "web-1", syn)
    without_ssh = {"default": "deny", "rule": SSH_ONLY["rule"][1:]}
    sim.publish_document("pop-a", 2, policy=parse_policy(without_ssh))
    started = sim.now
    while any(node.core.document is None or node.core.document.version != 2 for node in sim.live()):
        sim.run(0.05)
        assert sim.now - started < 2.0, "the change reached every member within 2 s"
    sim.nodes["ops-1"].core.firewall.egress = False
    data = ipv4_frame(sim, "ops-1", "web-1", 6, tcp(50000, 22, ACK) + b"after")
    _send(sim, "ops-1", data)
    assert not _delivered(sim, "web-1", data), "the established connection is cut at its next packet"
    assert sim.nodes["web-1"].core.firewall.denied_in["default"] == 1
    # a group change is a change of the decision's inputs too: guest joins ops
    guest_id = sim.nodes["guest"].node_id
    sim.publish_document("pop-a", 3, policy=parse_policy(SSH_ONLY), groups={guest_id: ("ops",)})
    sim.run(2.0)
    syn = ipv4_frame(sim, "guest", "web-1", 6, tcp(50200, 22, SYN))
    _send(sim, "guest", syn)
    assert _delivered(sim, "web-1", syn)


def test_a_permitted_pair_talks_through_a_relay_which_does_not_filter() -> None:
    sim = _mesh(seed=9)
    _publish(sim, 1, SSH_ONLY)
    sim.cut("ops-1", "web-1")
    sim.run(10.0)
    sim.record_frames("web-1")
    syn = ipv4_frame(sim, "ops-1", "web-1", 6, tcp(50300, 22, SYN))
    _send(sim, "ops-1", syn)
    sim.run(0.5)
    assert _delivered(sim, "web-1", syn)
    relays = [node for node in sim.live() if node.core.relayed_packets]
    assert relays, "the frame went through a relay"
    assert all(not node.core.firewall.denied_in for node in relays if node.name not in ("web-1",))


def test_port_security_a_member_cannot_send_with_another_members_mac() -> None:
    sim = _mesh(seed=10)  # the open policy: port security holds anyway
    web = sim.record_frames("web-1")
    forged = ipv4_frame(sim, "guest", "web-1", 6, tcp(1, 22, SYN), src_mac=sim.nodes["ops-1"].core.mac)
    _send(sim, "guest", forged)
    assert web == []
    assert sim.nodes["web-1"].core.drops[DropReason.SPOOFED_SOURCE] == 1


def test_a_bridged_mac_does_not_jump_to_another_member_until_it_went_quiet() -> None:
    sim = _mesh(seed=11)
    db = sim.record_frames("db-1")
    bridged = b"\x52\x54\x00\x00\x00\x01"
    db_mac = sim.nodes["db-1"].core.mac

    def from_behind(member: str) -> bytes:
        return db_mac + bridged + b"\x88\xb5" + member.encode() * 10

    _send(sim, "web-1", from_behind("web-1"))  # the host lives behind web-1
    _send(sim, "guest", from_behind("guest"))  # guest claims it at once: refused
    assert db == [from_behind("web-1")]
    assert sim.nodes["db-1"].core.drops[DropReason.SPOOFED_SOURCE] == 1
    assert sim.nodes["db-1"].core.mac_table.lookup(bridged, sim.now) == sim.nodes["web-1"].node_id
    sim.run(3.0)  # quiet at web-1 long enough: a migration, accepted
    _send(sim, "guest", from_behind("guest"))
    assert db[-1] == from_behind("guest")
    assert sim.nodes["db-1"].core.mac_table.lookup(bridged, sim.now) == sim.nodes["guest"].node_id


def test_a_member_that_skips_its_egress_check_still_tracks_its_flows_and_gets_the_replies() -> None:
    sim = _mesh(seed=12)
    _publish(sim, 1, SSH_ONLY)
    guest = sim.nodes["guest"].core
    guest.firewall.egress = False
    sim.record_frames("guest")
    _send(sim, "guest", ipv4_frame(sim, "guest", "web-1", 1, echo(8, 5)))
    reply = ipv4_frame(sim, "web-1", "guest", 1, echo(0, 5))
    _send(sim, "web-1", reply)
    assert _delivered(sim, "guest", reply)
    assert not guest.firewall.denied_out and not guest.firewall.denied_in
