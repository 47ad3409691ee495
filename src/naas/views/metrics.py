"""Topology -> the Prometheus text format, for the metrics port.

Theory of operation. ``metrics_text`` reads one snapshot (core/topology.py) through a
collector registered on a registry of its own, made for this call, and returns what
``prometheus_client.generate_latest`` writes for it. Nothing is kept between calls and
nothing global is touched: no default registry, no process or platform collectors, so
the output holds exactly the series below and depends on the topology alone. The
counters are the agent's own running totals; a restart of the agent starts them again
at zero, which Prometheus's rate() expects of a counter.

Every series has the label ``network``; per-peer series also ``peer`` (the peer's
name). Peers are the members other than the local one.

    naas_peer_rx_bytes_total       counter  bytes received from the peer
    naas_peer_tx_bytes_total       counter  bytes sent to the peer
    naas_peer_rx_packets_total     counter  packets received from the peer
    naas_peer_tx_packets_total     counter  packets sent to the peer
    naas_peer_handshakes_total     counter  handshakes completed with the peer
    naas_peer_rx_lost_total        counter  messages from the peer that never arrived
    naas_peer_superframes_cut      gauge    1 while super-frames to the peer are cut into
                                            smaller ones (a lossy link, core/loss.py), else 0
    naas_peer_rtt_seconds          gauge    smoothed RTT of the direct link (peers with one)
    naas_peer_reachable            gauge    1 if the peer can be reached (direct, relayed
                                            or idle), else 0 (connecting, unreachable);
                                            label ``reach`` holds which of those it is
    naas_drops_total               counter  packets dropped, label ``reason``
    naas_relayed_packets_total     counter  packets this member relayed for others
    naas_relayed_bytes_total       counter  bytes this member relayed for others
    naas_members                   gauge    members known, this one included
    naas_links                     gauge    live links in this member's view of the mesh
    naas_learned_macs              gauge    MAC addresses the switch has learned
    naas_policy_flows_total        counter  flows the policy allowed, label ``rule``
    naas_policy_denied_total       counter  frames the policy dropped, labels ``rule``
                                            (``default`` for the default action) and
                                            ``direction`` (in: from a member; out: not sent)
    naas_policy_connections        gauge    connections in the policy's connection table
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from naas.core.topology import MemberView, Reach, Topology

# Reaches counted as reachable: idle means no link yet, but a path exists.
REACHABLE = frozenset({Reach.DIRECT, Reach.RELAYED, Reach.IDLE})

# The per-peer counters: name, help, and the MemberView field they read.
_PEER_COUNTERS: tuple[tuple[str, str, Callable[[MemberView], int]], ...] = (
    ("naas_peer_rx_bytes", "Bytes received from the peer.", lambda m: m.rx_bytes),
    ("naas_peer_tx_bytes", "Bytes sent to the peer.", lambda m: m.tx_bytes),
    ("naas_peer_rx_packets", "Packets received from the peer.", lambda m: m.rx_packets),
    ("naas_peer_tx_packets", "Packets sent to the peer.", lambda m: m.tx_packets),
    ("naas_peer_handshakes", "Handshakes completed with the peer.", lambda m: m.handshakes),
    ("naas_peer_rx_lost", "Messages from the peer that never arrived.", lambda m: m.rx_lost),
)


def metrics_text(topology: Topology) -> bytes:
    """The Prometheus text exposition of ``topology``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TopologyCollector(topology))
    return generate_latest(registry)


class _TopologyCollector(Collector):
    """Yields the metric families of one topology snapshot."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    def collect(self) -> Iterator[Metric]:
        topo = self._topology
        net = topo.network
        peers = topo.members[1:]
        peer_labels = ["network", "peer"]
        # prometheus_client appends "_total" to a counter's name.
        for name, doc, read in _PEER_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=peer_labels)
            for peer in peers:
                counter.add_metric([net, peer.name], read(peer))
            yield counter

        rtt = GaugeMetricFamily(
            "naas_peer_rtt_seconds", "Smoothed RTT of the direct link to the peer.", labels=peer_labels
        )
        for peer in peers:
            if peer.rtt_ms is not None:
                rtt.add_metric([net, peer.name], peer.rtt_ms / 1000.0)
        yield rtt

        cut = GaugeMetricFamily(
            "naas_peer_superframes_cut",
            "1 while super-frames to the peer are cut into smaller ones (a lossy link), else 0.",
            labels=peer_labels,
        )
        for peer in peers:
            cut.add_metric([net, peer.name], 1.0 if peer.superframes_cut else 0.0)
        yield cut

        reachable = GaugeMetricFamily(
            "naas_peer_reachable",
            "1 if the peer can be reached (direct, relayed or idle), else 0; reach says how.",
            labels=[*peer_labels, "reach"],
        )
        for peer in peers:
            reachable.add_metric([net, peer.name, peer.reach.value], 1.0 if peer.reach in REACHABLE else 0.0)
        yield reachable

        drops = CounterMetricFamily("naas_drops", "Packets dropped, by reason.", labels=["network", "reason"])
        for reason, count in sorted(topo.drops.items()):
            drops.add_metric([net, reason], count)
        yield drops

        policy = topo.policy
        allowed = CounterMetricFamily(
            "naas_policy_flows", "Flows the policy allowed, by deciding rule.", labels=["network", "rule"]
        )
        for rule, count in sorted(policy.get("hits", {}).items()):
            allowed.add_metric([net, rule], count)
        yield allowed
        denied = CounterMetricFamily(
            "naas_policy_denied",
            "Frames the policy dropped, by deciding rule ('default' for the default action) and direction"
            " (in: arriving from a member; out: not sent).",
            labels=["network", "rule", "direction"],
        )
        for direction in ("in", "out"):
            for rule, count in sorted(policy.get(f"denied_{direction}", {}).items()):
                denied.add_metric([net, rule, direction], count)
        yield denied
        yield _single(
            GaugeMetricFamily,
            "naas_policy_connections",
            "Connections in the policy's connection table.",
            net,
            policy.get("connections", 0),
        )

        yield _single(
            CounterMetricFamily,
            "naas_relayed_packets",
            "Packets relayed for other members.",
            net,
            topo.relayed_packets,
        )
        yield _single(
            CounterMetricFamily,
            "naas_relayed_bytes",
            "Bytes relayed for other members.",
            net,
            topo.relayed_bytes,
        )
        yield _single(
            GaugeMetricFamily, "naas_members", "Members known, this one included.", net, len(topo.members)
        )
        yield _single(
            GaugeMetricFamily,
            "naas_links",
            "Live links in this member's view of the mesh.",
            net,
            len(topo.links),
        )
        yield _single(
            GaugeMetricFamily,
            "naas_learned_macs",
            "MAC addresses the switch has learned.",
            net,
            topo.learned_macs,
        )


def _single(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    network: str,
    value: float,
) -> Metric:
    family = kind(name, doc, labels=["network"])
    family.add_metric([network], value)
    return family


CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text format's media type, for the metrics port
