"""Status: a member's Topology (core/topology.py) built from what its NodeCore holds.

Theory of operation. ``NodeCore.topology(now)`` (core/node.py) calls ``topology_of``
with what it reads: the member table, the routes, the data path's ``address_for`` and
counters, the network document, and NodeCore's own ``wanted`` (a direct link is kept).
Each member gets its reach from here (the rules are in core/topology.py): ``direct`` while
its direct link is up, ``relayed`` with a session through a next hop whose link is up,
``connecting`` while our initiations have gone unanswered for less than CONNECTING_FOR,
``idle`` in a large mesh with no link kept and a path to it, else ``unreachable``.
``live_links`` lists the two-way links of the link-state database.

Why a module of its own: building the snapshot is reading, not protocol. It changes
nothing in the node (``address_for`` only refreshes a member's ``relayed_via`` from the
current routes, as sending would), and kept here it leaves NodeCore its decisions; it
stays apart from core/topology.py, the plain model that the CLI also parses back from
JSON, so that the model does not import the node's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from naas.core.mesh_routes import MeshRoutes
from naas.core.peer import Address, Peer
from naas.core.topology import CONNECTING_FOR, LinkView, MemberView, Reach, Topology
from naas.core.wire import DropReason
from naas.model.certificate import Certificate
from naas.model.document import NetworkDocument
from naas.model.ids import format_mac


def topology_of(
    now: float,
    *,
    network: str,
    own: Certificate,
    mtu: int,
    peers: Mapping[int, Peer],
    routes: MeshRoutes,
    groups_of: Callable[[Certificate], tuple[str, ...]],
    address_for: Callable[[Peer], Address | None],
    wanted: Callable[[Peer, float], bool],
    document: NetworkDocument | None,
    document_applied_at: float,
    drops: Mapping[DropReason, int],
    relayed_packets: int,
    relayed_bytes: int,
    learned_macs: int,
    policy: dict[str, Any],
) -> Topology:
    """This member's view of the mesh: how each member is reached from here, and every
    live two-way link with its RTT."""
    me = MemberView(
        own.node_id,
        own.name,
        own.is_pop,
        str(own.ip) if own.ip else None,
        format_mac(own.mac),
        Reach.SELF,
        groups=groups_of(own),
    )
    members = [me]
    for peer in sorted(peers.values(), key=lambda p: (p.name, p.node_id)):
        session = peer.send_session(now)
        stats = peer.stats
        address_for(peer)  # refreshes relayed_via from the current routes
        via = peers.get(peer.relayed_via) if peer.relayed_via is not None else None
        direct = peer.link_up(now)
        if direct:
            reach = Reach.DIRECT
        elif session is not None and via is not None and via.link_up(now):
            reach = Reach.RELAYED
        elif peer.pending is not None and now - (peer.calling_since or now) < CONNECTING_FOR:
            reach = Reach.CONNECTING
        elif session is None and not wanted(peer, now) and routes.next_hop(peer.node_id):
            reach = Reach.IDLE  # a large mesh: no link until frames flow, and a path exists
        else:
            reach = Reach.UNREACHABLE
        endpoint = peer.current_endpoint
        members.append(
            MemberView(
                node_id=peer.node_id,
                name=peer.name,
                pop=peer.certificate.is_pop,
                ip=str(peer.certificate.ip.ip) if peer.certificate.ip else None,
                mac=format_mac(peer.certificate.mac),
                reach=reach,
                via=via.name if reach is Reach.RELAYED and via is not None else None,
                endpoint=f"{endpoint[0]}:{endpoint[1]}" if endpoint else None,
                rtt_ms=round(stats.rtt * 1000, 3) if stats.rtt is not None and direct else None,
                rx_bytes=stats.rx_bytes,
                tx_bytes=stats.tx_bytes,
                rx_packets=stats.rx_packets,
                tx_packets=stats.tx_packets,
                handshakes=stats.handshakes,
                session_age_s=round(session.age(now), 1) if session else None,
                rx_lost=stats.rx_lost,
                superframes_cut=peer.tx_adaptation.cutting(now),
                groups=groups_of(peer.certificate),
                document_version=peer.document_version,
            )
        )
    return Topology(
        network=network,
        local=own.node_id,
        mtu=mtu,
        members=tuple(members),
        links=live_links(routes, peers, own.node_id),
        drops={reason.value: count for reason, count in drops.items()},
        relayed_packets=relayed_packets,
        relayed_bytes=relayed_bytes,
        learned_macs=learned_macs,
        document_version=document.version if document is not None else 0,
        document_applied_at=round(document_applied_at, 3),
        revoked=tuple((r.node_id, r.name) for r in document.revoked) if document else (),
        policy=policy,
    )


def live_links(routes: MeshRoutes, peers: Mapping[int, Peer], own: int) -> tuple[LinkView, ...]:
    """Every link both ends advertise (the routing's two-way rule), ours from the live
    measurements; RTT = the mean of the two ends' costs. Only links between members
    this one has a path to: the last advertisements of members that went away (two
    stopped PoPs still list their link) say nothing about the mesh any more."""
    known = {node for node in peers if routes.next_hop(node) is not None} | {own}
    links = []
    for a in sorted(known):
        for b, cost_ab in routes.neighbours_of(a).items():
            if a < b and b in known:
                cost_ba = routes.neighbours_of(b).get(a)
                if cost_ba is not None:
                    links.append(LinkView(a, b, round((cost_ab + cost_ba) / 2000, 3)))
    return tuple(links)
