"""Loss-adaptive super-frames across the mesh (core/loss.py): on a lossy link the
receiver reports the messages it never got, the sender cuts its super-frames into
segments sealed one by one, and sends them whole again once the link is clean.
Pure NodeCores wired by tests/helpers.py with seeded per-datagram loss."""

from __future__ import annotations

from test_node_offload import build_mesh, build_pair, super_frame

from helpers import SimNet
from naas.core.loss import SPLIT_HOLD
from naas.core.node import NodeCore
from naas.core.offload import PLAIN_VNET_HDR, software_segments
from naas.core.wire import TYPE_DATA, TYPE_FRAGMENT


def stream(net: SimNet, alpha: NodeCore, beta: NodeCore, seconds: float, every: float = 0.01) -> None:
    """Alpha's naas0 hands over a super-frame for beta every ``every`` seconds."""
    end = net.now + seconds
    while net.now < end:
        vnet, frame = super_frame(beta, alpha)
        alpha.tap_frames_received([vnet + frame], net.now)
        net.run(every)


def test_lossy_link_cuts_super_frames_into_smaller_ones_then_sends_them_whole_again() -> None:
    net, alpha, beta = build_pair()
    adaptation = alpha.peers[beta.node_id].tx_adaptation
    net.loss = 0.02  # 2 % of datagrams: some 60 % of 46-piece messages
    stream(net, alpha, beta, 3.0)
    assert beta.peers[alpha.node_id].stats.rx_lost > 0
    assert adaptation.cutting(net.now)
    assert adaptation.splits == 1
    assert adaptation.cut_size(net.now) == 2  # pieces of two segments lose some 4 % at 2 %

    net.loss = 0.0
    vnet, frame = super_frame(beta, alpha)
    segments = software_segments(vnet, frame)
    alpha.tap_frames_received([vnet + frame], net.now)
    runs, datagrams = alpha.take_runs(), alpha.take_datagrams()
    assert runs and {run[0] for run, _, _ in runs} == {TYPE_FRAGMENT}
    beta.runs_received([(bytes(run), net.address_of("alpha"), size) for run, _, size in runs], net.now)
    beta.datagrams_received([(datagram, net.address_of("alpha")) for datagram, _ in datagrams], net.now)
    written = [bytes(piece) for piece in beta.take_frames()]
    assert len(written) == -(-len(segments) // 2), "super-frames of two segments"
    assert [s for piece in written for s in software_segments(piece[:10], piece[10:])] == segments

    adaptation.piece_segments = 1  # as a loss of 5 % or more would have it: single segments
    alpha.tap_frames_received([vnet + frame], net.now)
    assert alpha.take_runs() == [], "no FRAGMENT run for single segments"
    datagrams = alpha.take_datagrams()
    assert [datagram[0] for datagram, _ in datagrams] == [TYPE_DATA] * len(segments)
    beta.datagrams_received([(datagram, net.address_of("alpha")) for datagram, _ in datagrams], net.now)
    assert [bytes(written) for written in beta.take_frames()] == [PLAIN_VNET_HDR + s for s in segments]

    stream(net, alpha, beta, SPLIT_HOLD + 1.0, every=0.1)  # a clean link: no report extends the hold
    assert not adaptation.cutting(net.now)
    alpha.tap_frames_received([vnet + frame], net.now)
    runs = alpha.take_runs()
    assert len(runs) == 1 and runs[0][0][0] == TYPE_FRAGMENT
    assert alpha.take_datagrams() == []
    assert adaptation.splits == 1


def test_clean_link_reports_nothing_and_keeps_super_frames_whole() -> None:
    net, alpha, beta = build_pair()
    stream(net, alpha, beta, 3.0)
    assert beta.peers[alpha.node_id].stats.rx_lost == 0
    assert alpha.peers[beta.node_id].tx_adaptation.splits == 0
    assert sum(beta.drops.values()) == 0, beta.drops


def test_probes_to_a_link_known_down_do_not_cut_super_frames_on_the_relayed_path() -> None:
    """While the direct link is down the sender keeps probing it, on the session the
    relayed frames use: those probes are lost, and the receiver counts them in its loss
    reports. They say the direct link is down, which the sender knows; they say nothing
    about the relayed path, so super-frames through the relay stay whole."""
    net, cores = build_mesh({"alpha": True, "relay": True, "beta": True})
    alpha, beta = cores["alpha"], cores["beta"]
    net.cut.add(frozenset(("alpha", "beta")))
    for _ in range(120):
        net.run(0.25)
        if alpha.peers[beta.node_id].relayed_via is not None:
            break
    assert alpha.peers[beta.node_id].relayed_via == cores["relay"].node_id
    small = PLAIN_VNET_HDR + beta.mac + alpha.mac + b"\x08\x00" + bytes(50)
    for _ in range(120):  # a light flow: two small frames a second for a minute
        alpha.tap_frames_received([small], net.now)
        net.run(0.5)
    assert beta.peers[alpha.node_id].stats.rx_lost >= 30, "the probes to the cut link were lost and reported"
    adaptation = alpha.peers[beta.node_id].tx_adaptation
    assert adaptation.cut_until == float("-inf"), "never cut"
    vnet, frame = super_frame(beta, alpha)
    alpha.tap_frames_received([vnet + frame], net.now)
    runs = alpha.take_runs()
    assert len(runs) == 1 and runs[0][0][0] == TYPE_FRAGMENT
    assert runs[0][1] == net.address_of("relay")
