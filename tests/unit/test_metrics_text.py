"""The metrics port's text (views/metrics.py), parsed back with prometheus_client's own
parser: per-peer counters, RTT in seconds, reachability, drops by reason, relayed
totals and the mesh gauges, for a hand-made topology."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from naas.core.topology import LinkView, MemberView, Reach, Topology
from naas.views.metrics import metrics_text

WEIRD = 'odd "name"\\x'


def peer(node_id: int, name: str, reach: Reach, **counters: Any) -> MemberView:
    return MemberView(
        node_id=node_id,
        name=name,
        pop=False,
        ip=f"172.32.0.{node_id}",
        mac=f"02:00:00:00:00:{node_id:02x}",
        reach=reach,
        **counters,
    )


def topology() -> Topology:
    return Topology(
        network="acme",
        local=5,
        mtu=1380,
        members=(
            peer(5, "laptop", Reach.SELF, rx_bytes=999_999),
            peer(
                1,
                "pop-paris",
                Reach.DIRECT,
                rtt_ms=12.5,
                rx_bytes=1000,
                tx_bytes=2000,
                rx_packets=10,
                tx_packets=20,
                handshakes=3,
            ),
            peer(
                3,
                "nas",
                Reach.RELAYED,
                via="pop-paris",
                rx_bytes=50,
                tx_bytes=60,
                handshakes=1,
                rx_lost=40,
                superframes_cut=True,
            ),
            peer(9, "idle-box", Reach.IDLE),
            peer(11, "joining", Reach.CONNECTING),
            peer(12, WEIRD, Reach.UNREACHABLE, rtt_ms=0.4),
        ),
        links=(LinkView(1, 5, 12.5), LinkView(1, 3, 2.0)),
        drops={"replay": 4, "no_route": 2},
        relayed_packets=7,
        relayed_bytes=7000,
        learned_macs=5,
        policy={
            "connections": 3,
            "hits": {"ssh-from-ops": 2},
            "denied_in": {"default": 9, "ssh-from-ops": 0},
            "denied_out": {"default": 1},
        },
    )


def samples() -> dict[str, list[Sample]]:
    """Samples by name, and the type of each family checked on the way."""
    text = metrics_text(topology()).decode()
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
            kind = "counter" if sample.name.endswith("_total") else "gauge"
            assert family.type == kind, sample.name
    return out


def per_peer(name: str) -> dict[str, float]:
    return {s.labels["peer"]: s.value for s in samples()[name]}


def test_byte_and_packet_counters_per_peer_and_not_for_the_local_member() -> None:
    rx = per_peer("naas_peer_rx_bytes_total")
    assert rx == {
        "pop-paris": 1000.0,
        "nas": 50.0,
        "idle-box": 0.0,
        "joining": 0.0,
        WEIRD: 0.0,
    }
    assert "laptop" not in rx
    assert per_peer("naas_peer_tx_bytes_total")["pop-paris"] == 2000.0
    assert per_peer("naas_peer_tx_bytes_total")["nas"] == 60.0
    assert per_peer("naas_peer_rx_packets_total")["pop-paris"] == 10.0
    assert per_peer("naas_peer_tx_packets_total")["pop-paris"] == 20.0
    assert per_peer("naas_peer_handshakes_total") == {
        "pop-paris": 3.0,
        "nas": 1.0,
        "idle-box": 0.0,
        "joining": 0.0,
        WEIRD: 0.0,
    }


def test_lost_messages_and_cut_super_frames_per_peer() -> None:
    assert per_peer("naas_peer_rx_lost_total") == {
        "pop-paris": 0.0,
        "nas": 40.0,
        "idle-box": 0.0,
        "joining": 0.0,
        WEIRD: 0.0,
    }
    assert per_peer("naas_peer_superframes_cut") == {
        "pop-paris": 0.0,
        "nas": 1.0,
        "idle-box": 0.0,
        "joining": 0.0,
        WEIRD: 0.0,
    }


def test_rtt_is_in_seconds_and_only_for_peers_that_have_one() -> None:
    assert per_peer("naas_peer_rtt_seconds") == {"pop-paris": 0.0125, WEIRD: 0.0004}


def test_reachable_is_one_or_zero_with_the_reach_as_a_label() -> None:
    got = {(s.labels["peer"], s.labels["reach"]): s.value for s in samples()["naas_peer_reachable"]}
    assert got == {
        ("pop-paris", "direct"): 1.0,
        ("nas", "relayed"): 1.0,
        ("idle-box", "idle"): 1.0,
        ("joining", "connecting"): 0.0,
        (WEIRD, "unreachable"): 0.0,
    }


def test_drops_by_reason() -> None:
    got = {s.labels["reason"]: s.value for s in samples()["naas_drops_total"]}
    assert got == {"replay": 4.0, "no_route": 2.0}


def test_policy_counters_by_rule_and_direction() -> None:
    got = samples()
    assert {s.labels["rule"]: s.value for s in got["naas_policy_flows_total"]} == {"ssh-from-ops": 2.0}
    denied = {(s.labels["rule"], s.labels["direction"]): s.value for s in got["naas_policy_denied_total"]}
    assert denied == {("default", "in"): 9.0, ("ssh-from-ops", "in"): 0.0, ("default", "out"): 1.0}
    assert [s.value for s in got["naas_policy_connections"]] == [3.0]


def test_node_wide_counters_and_gauges() -> None:
    got = samples()

    def one(name: str) -> float:
        (sample,) = got[name]
        return sample.value

    assert one("naas_relayed_packets_total") == 7.0
    assert one("naas_relayed_bytes_total") == 7000.0
    assert one("naas_members") == 6.0  # the local member included
    assert one("naas_links") == 2.0
    assert one("naas_learned_macs") == 5.0


def test_every_series_carries_the_network_and_nothing_else_is_exported() -> None:
    got = samples()
    assert all(s.labels["network"] == "acme" for series in got.values() for s in series)
    assert set(got) == {
        "naas_peer_rx_bytes_total",
        "naas_peer_tx_bytes_total",
        "naas_peer_rx_packets_total",
        "naas_peer_tx_packets_total",
        "naas_peer_handshakes_total",
        "naas_peer_rx_lost_total",
        "naas_peer_superframes_cut",
        "naas_peer_rtt_seconds",
        "naas_peer_reachable",
        "naas_drops_total",
        "naas_relayed_packets_total",
        "naas_relayed_bytes_total",
        "naas_members",
        "naas_links",
        "naas_learned_macs",
        "naas_policy_flows_total",
        "naas_policy_denied_total",
        "naas_policy_connections",
    }


def test_the_output_depends_on_the_topology_alone() -> None:
    assert metrics_text(topology()) == metrics_text(topology())


def test_an_empty_mesh_still_has_the_gauges() -> None:
    alone = Topology(network="solo", local=1, mtu=1380, members=(peer(1, "only", Reach.SELF),), links=())
    text = metrics_text(alone).decode()
    got = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert got["naas_members"].value == 1.0
    assert got["naas_links"].value == 0.0
    assert "naas_peer_rx_bytes_total" not in got
