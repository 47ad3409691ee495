"""The agent: drives one NodeCore with a real TAP device and a real UDP socket.

Theory of operation. The event loop (uvloop, see `run_loop`) watches two file
descriptors. When naas0 is readable, a batch of frames is read and handed to
``NodeCore.tap_frames_received``; when the UDP socket is readable, a batch of datagrams
goes to ``datagrams_received`` (or, with UDP GRO, a batch of coalesced runs to
``runs_received``). After each batch, ``_transmit()`` drains the core's effects:
datagrams and GSO runs out, frames into naas0, events to the log; frames written to
naas0 are followed by a read of it, since the kernel often answers inside the write
(after a lull, the event loop makes that read). With ``offload`` (the default) naas0
and the socket use the kernel's segmentation offloads where it has them
(daemon/tap.py, daemon/udp.py); the core is told which naas0 has. One timer, re-armed to
``NodeCore.next_deadline()``, runs handshake retransmission, rekeying and probes.
Nothing here decides anything about the protocol; it only moves bytes and time.

The express lane. The first read of each wake-up is offered to
``NodeCore.express_send`` (from naas0) or ``express_receive`` (from the socket) before
the rest is read: the common frame of a sparse flow (a ping, a request) is sealed and
sent, or opened and written, in one step, with no batch around it; anything else is
declined untouched and joins the batch (docs/performance.md, "The express lane").
After a lull on its descriptor (``QUIET_GAP``, or the shorter ``BURST_GAP`` when the
frames before it came alone too: a sparse flow) such a frame is most likely alone, so
once the lane has sent or written it the agent goes straight back to sleep instead of
reading on to find nothing: on the test VM, any work after the send was measured to
delay the answer (docs/performance.md, "Back to sleep"). Anything that did queue behind
the frame makes the level-triggered epoll wake the loop again at once.

Turns. One wake-up handles at most BATCH reads and BATCH_BYTES bytes per direction,
then the loop looks at the other descriptor. With offloads a read can be a 64 KiB
super-frame or GRO run, so a count alone would let one turn seal or open 4 MiB (some
milliseconds) while an echo reply or a TCP ACK waits on the other side; four
super-frames keep that wait short and cost no extra system calls, since every read is
one anyway (docs/performance.md, "RTT under load").

Polling while traffic flows. A wake-up after a few milliseconds of sleep is slow: on a
shared VM the CPU's caches and the vCPU itself have gone to other work, and the first
frame after a pause pays for it several times over (docs/performance.md, "Idle
latency"). So for ``POLL_LINGER`` seconds after the last frame read from or written to
naas0 (the mesh's own keepalives and probes do not count), a second timer also looks
at naas0 and the socket every ``poll_interval`` (2 ms by default,
``--poll-ms``; 0 turns it off). Each look is two reads that usually find nothing; it
keeps the path warm for the next frame of a sparse flow (a ping, a request/response).
A poll that finds nothing also runs a frame through the core's sealing and opening
code on a private loopback session (``NodeCore.warm_up``): that code and AES-GCM's are
what a frame after a pause finds cold, and keeping them warm cuts the idle RTT further
(docs/performance.md, "Warming the path up"); it then sends a datagram of a ping's
size to a socket of its own on loopback and reads it back (``LinuxUdpSocket.echo``),
which warms the kernel's UDP sending and receiving code the same way ("Warming the
kernel's path"). A poll that comes less than an interval after a wake-up that read
something does none of this: that read has just warmed the path. Together they cost
~5-6% of a core while a sparse flow runs and nothing once the agent is idle.

Initiations have a socket of their own (daemon/steering.py): the kernel steers every
INITIATION to a second socket on the mesh port, with a small queue, so that a flood of
them overflows that queue and not the one the sessions' datagrams wait in. The agent
reads it HANDSHAKE_BATCH datagrams per wake-up; after a full batch (a flood) it leaves
it alone for HANDSHAKE_PAUSE, so a flood takes a bounded share of the agent's time.
``NAAS_HANDSHAKE_SOCKET=off`` keeps one socket for everything (as before; for bench/run's
comparison, or a kernel that misbehaves with the steering). ``NAAS_SKIP_EGRESS_FILTER=1``
sends what this member's own policy check would hold back (docs/policy.md: the receiver's
check alone must keep it out; for tests).

The member cache (members.json) is rewritten when membership changes, at most every
few seconds, so a restart works with every PoP down.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any

from naas.core.fragments import gso_max_size_for
from naas.core.network_document import revoked_by
from naas.core.node import NodeCore, NodeEvent
from naas.core.topology import Topology
from naas.core.wire import overlay_mtu
from naas.daemon import control, netconf
from naas.daemon.backoff import Backoff
from naas.daemon.membership import AgentMembership
from naas.daemon.metrics_server import serve_metrics
from naas.daemon.renewal import CertificateRenewal
from naas.daemon.state import NodeDir, write_file
from naas.daemon.steering import bind_mesh_sockets
from naas.daemon.tap import LinuxTap
from naas.daemon.udp import LinuxUdpSocket, coalesce
from naas.model.certificate import Certificate
from naas.model.network import NetworkInfo

log = logging.getLogger("naas.agent")

BATCH = 64  # frames or datagrams handled per wake-up, per direction
BATCH_BYTES = 256 * 1024  # ... and bytes: four super-frames (see "Turns" in the docstring)
HANDSHAKE_BATCH = 16  # initiations read from the handshake socket per wake-up
HANDSHAKE_PAUSE = 0.002  # seconds the handshake socket rests after a full batch (a flood)
DEFAULT_POLL_INTERVAL = 0.002  # seconds between polls while traffic flows (see the docstring)
MAX_POLL_INTERVAL = 0.1
POLL_LINGER = 1.0  # seconds of polling after the last frame through naas0
QUIET_GAP = 0.001  # seconds: a frame this long after the last on its descriptor most likely came alone
BURST_GAP = 0.0002  # seconds: ... or this long, when the frames before it came alone too ("Back to sleep")
WARM_DATAGRAM = bytes(140)  # about a sealed ping frame: what a poll echoes on loopback
CACHE_SAVE_INTERVAL = 5.0  # seconds between rewrites of members.json, at most
MAX_CACHE_SAVE_RETRY = 60.0  # ... and between tries while it cannot be written (daemon/backoff.py)
DEFAULT_INTERFACE = "naas0"


def utc(unix_time: int) -> str:
    return datetime.datetime.fromtimestamp(unix_time, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


REVOKED_MESSAGE = "{name} is revoked from network {network!r}: it stopped; ask for a new invitation"


class AgentError(Exception):
    """The agent cannot start as asked; the message says why, in one line."""


class Agent(AgentMembership):
    def __init__(
        self,
        node_dir: NodeDir,
        *,
        interface: str = DEFAULT_INTERFACE,
        listen_host: str = "0.0.0.0",
        metrics: tuple[str, int] | None = None,
        offload: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.node_dir = node_dir
        self.offload = offload  # ask for TSO/checksum offload on naas0 and UDP GSO/GRO
        self.poll_interval = poll_interval  # 0: no polling
        self.polls = 0  # polls made, for status
        self.warm_ups = self.warm_ups_failed = 0  # NodeCore.warm_up calls made, and failed
        self.kernel_warm_ups = 0  # datagrams a poll echoed through loopback (_warm_kernel_path)
        self.express_sent = self.express_received = 0  # frames through the express lane
        self._poll: asyncio.TimerHandle | None = None  # armed while traffic flows
        self._traffic_at = 0.0  # loop time of the last frame through naas0
        # "Back to sleep": when the last handling of a frame from each descriptor ended
        # (time.monotonic: the loop's clock counts whole milliseconds), and whether the
        # last wake-up that found frames found one alone, sent or written by the lane
        self._tap_done_at = self._udp_done_at = 0.0
        self._lone = False
        self.metrics_address = metrics  # (host, port) of the opt-in Prometheus port
        self._metrics: Any = None  # aiohttp AppRunner while serving
        self.interface = interface
        self.listen_host = listen_host
        self.core: NodeCore | None = None
        self._tap: LinuxTap | None = None
        self._udp: LinuxUdpSocket | None = None
        self._handshake_udp: LinuxUdpSocket | None = None  # initiations only (daemon/steering.py)
        self._handshake_rest: asyncio.TimerHandle | None = None  # armed while it rests after a flood
        self.handshake_pauses = 0  # full batches read from the handshake socket: a flood
        self._warm_socket: LinuxUdpSocket | None = None  # the mesh socket's loopback twin
        self._loop: asyncio.AbstractEventLoop | None = None  # cached: asking costs a getpid()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._stopped = asyncio.Event()
        self._members_dirty = False
        self._cache_saves = Backoff(CACHE_SAVE_INTERVAL, MAX_CACHE_SAVE_RETRY)  # members.json
        self._control: asyncio.AbstractServer | None = None
        self.extra_status: Callable[[], dict[str, Any]] | None = None
        self.revoked = False  # the network document revoked this member: it stopped
        self.renewal: CertificateRenewal | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._checking_in: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        identity = self.node_dir.load_identity()
        network = self.node_dir.load_network()
        members = self.node_dir.load_members()
        cert = identity.certificate
        document = self.node_dir.load_document()
        if document is not None and revoked_by(document, network, cert.node_id):
            raise AgentError(REVOKED_MESSAGE.format(name=cert.name, network=network.name))
        if time.time() > cert.not_after:
            raise AgentError(
                f"the certificate of {cert.name} expired at {utc(cert.not_after)} while this member was off: "
                "ask for a new invitation (naas-enrollment URL --force)"
            )
        # pyroute2's synchronous API runs an event loop of its own: call it from a thread
        mtu = await asyncio.to_thread(self._configure_interface, network, cert)
        why_not = ""
        try:
            if os.environ.get("NAAS_HANDSHAKE_SOCKET", "on") == "off":  # one socket, as before (bench/run)
                self._udp = LinuxUdpSocket.bind(self.listen_host, network.mesh_port, offload=self.offload)
            else:
                self._udp, self._handshake_udp, why_not = bind_mesh_sockets(
                    self.listen_host, network.mesh_port, offload=self.offload
                )
        except OSError as exc:  # EADDRINUSE: another agent on this host (another network's?) has it
            raise AgentError(f"mesh port {network.mesh_port}: {exc.strerror or exc}") from None
        if why_not:
            log.warning("initiations share the data socket's queue (%s)", why_not)
        if self.poll_interval > 0:
            self._warm_socket = self._bind_warm_socket(self._udp)
        now = loop.time()
        self.core = NodeCore(
            identity,
            network,
            random_bytes=os.urandom,
            now=now,
            wall_offset=time.time() - now,
            mtu=mtu,
            members=members,
            tap_offload=self._tap.offload,
            document=document,
        )
        if os.environ.get("NAAS_SKIP_EGRESS_FILTER") == "1":  # what a compromised member could do (tests)
            self.core.firewall.egress = False
            log.warning("NAAS_SKIP_EGRESS_FILTER=1: frames the policy denies are sent anyway")
        loop.add_reader(self._tap.fileno(), self._tap_readable)
        loop.add_reader(self._udp.fileno(), self._udp_readable)
        if self._handshake_udp is not None:
            loop.add_reader(self._handshake_udp.fileno(), self._handshakes_readable)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        if self.metrics_address is not None:  # before the control socket: `naas up` waits for that
            host, port = self.metrics_address
            try:
                self._metrics = await serve_metrics(host, port, self._topology)
            except OSError as exc:
                raise AgentError(f"--metrics {host}:{port}: {exc.strerror or exc}") from None
            log.info("metrics on http://%s:%d/metrics", host, port)
        self._control = await control.serve(self.node_dir.socket_path, self._control_request)
        write_file(self.node_dir.pid_path, f"{os.getpid()}\n".encode())
        log.info(
            "agent started name=%s node_id=%d interface=%s mtu=%d ip=%s listen=%s:%d members=%d offloads=%s",
            cert.name,
            cert.node_id,
            self._tap.name,
            mtu,
            cert.ip,
            self.listen_host,
            network.mesh_port,
            len(members),
            self._offload_summary(),
        )
        self._arm_timer(now)
        self.start_renewals(self._renew_at_pops)
        self.check_in()

    def _configure_interface(self, network: NetworkInfo, cert: Certificate) -> int:
        """Open naas0 and set its MAC, MTU and address; returns the MTU."""
        underlay_mtu, ipv6 = 1500, False
        if network.pops:
            host = network.pops[0].mesh_endpoint.host
            underlay_mtu, ipv6 = netconf.route_mtu_to(host), ":" in host
        mtu = overlay_mtu(underlay_mtu, ipv6_underlay=ipv6)
        try:
            self._tap = LinuxTap.open(self.interface, offload=self.offload)
        except OSError as exc:  # EBUSY: another agent on this host (another network's?) holds it
            busy = exc.errno == errno.EBUSY
            hint = " (another agent holds it: give each network its own with --interface)" if busy else ""
            raise AgentError(f"{exc.strerror or exc}{hint}") from None
        if self.node_dir.load_interface() != self._tap.name:
            self.node_dir.save_interface(self._tap.name)  # where `naas up` starts it again
        netconf.configure_interface(
            self._tap.name,
            mac=cert.mac,
            mtu=mtu,
            address=cert.ip if network.layer3 else None,
            gso_max_size=gso_max_size_for(mtu) if self._tap.offload else None,  # one GSO run each
        )
        return mtu

    async def run(self) -> None:
        await self.start()
        await self.run_until_stopped()

    async def run_until_stopped(self) -> None:
        """After start(): serve until stop() (SIGTERM, SIGINT, `naas down`, or this member
        revoked: then AgentError says so)."""
        try:
            await self._stopped.wait()
        finally:
            if self._metrics is not None:
                await self._metrics.cleanup()
            self.close()
        if self.revoked and self.core is not None:
            name = self.core.identity.certificate.name
            raise AgentError(REVOKED_MESSAGE.format(name=name, network=self.core.network.name))

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        loop = asyncio.get_event_loop()
        for timer in (self._timer, self._poll, self._handshake_rest, self._renewing, self._checking_in):
            if timer is not None:
                timer.cancel()
        if self._control is not None:
            self._control.close()
        for device in (self._tap, self._udp, self._handshake_udp):
            if device is not None:
                loop.remove_reader(device.fileno())
                device.close()
        self._tap = self._udp = self._handshake_udp = None
        if self._warm_socket is not None:
            self._warm_socket.close()
            self._warm_socket = None
        if self.core is not None:
            self._save_members(force=True)
        self.node_dir.socket_path.unlink(missing_ok=True)
        self.node_dir.pid_path.unlink(missing_ok=True)
        log.info("agent stopped")

    # -- I/O ----------------------------------------------------------------------------------

    def _alone(self, done_at: float) -> bool:
        """Did the frame just read most likely come alone? (docs/performance.md, "Back to
        sleep"). Yes after a lull on its descriptor, or after a shorter one when the
        frames before it came alone too: a sparse flow. Under load, frames queued behind
        one come back at once, and a long turn on the other descriptor leaves the last
        wake-up a batch, not a lone frame."""
        gap = monotonic() - done_at
        return gap > QUIET_GAP or (self._lone and gap > BURST_GAP)

    def _tap_readable(self) -> None:
        assert self._tap is not None and self._udp is not None and self.core is not None
        reads = self._tap.read_batch(1)
        if not reads:
            return
        now = self._now()
        alone = self._alone(self._tap_done_at)
        express = self.core.express_send(reads[0], now)
        if express is not None:  # sent before the rest is even read ("The express lane")
            self._udp.send_batch((express,))
            self.express_sent += 1
            if alone:  # back to sleep: epoll wakes us at once for anything queued behind it
                self._lone = True
                self._traffic(now)
                self._tap_done_at = monotonic()
                return
            reads = self._tap.read_batch(BATCH - 1, BATCH_BYTES)
            self._lone = not reads
        else:
            reads += self._tap.read_batch(BATCH - 1, BATCH_BYTES - len(reads[0]))
            self._lone = False
        if reads:
            self.core.tap_frames_received(reads, now)
            self._transmit()
        self._traffic(now)
        self._tap_done_at = monotonic()

    def _udp_readable(self) -> None:
        assert self._udp is not None and self._tap is not None and self.core is not None
        udp = self._udp
        first = udp.receive_coalesced(1)  # without UDP GRO, a datagram is a run of one
        if not first:
            return
        now = self._now()
        alone = self._alone(self._udp_done_at)
        run, sender, segment = first[0]
        frame = self.core.express_receive(run, sender, now) if len(run) <= segment else None
        if frame is None:
            runs = first + udp.receive_coalesced(BATCH - 1, BATCH_BYTES - len(run))
            self._lone = False
        else:  # taken; b"": dropped, or not a frame, and what it made waits in the core
            if frame:  # into naas0 before the rest is even read ("The express lane")
                self._tap.write_batch((frame,))
                self.express_received += 1
                self._traffic(now)
                if alone:  # back to sleep: epoll wakes us at once for the kernel's answer
                    self._lone = True
                    self._udp_done_at = monotonic()
                    return
                self._tap_readable()  # the kernel often answers inside the write: send that on too
            runs = udp.receive_coalesced(BATCH - 1, BATCH_BYTES)
            if runs:
                self._lone = False
        if runs:
            self.core.runs_received(runs, now)
        if self._transmit():
            self._traffic(now)
            # The kernel often answers a frame inside our write (an echo reply, a TCP
            # ACK): read it now rather than after another trip through the event loop.
            self._tap_readable()
        self._udp_done_at = monotonic()

    def _handshakes_readable(self) -> None:
        """Initiations, from their own socket (daemon/steering.py): a few per wake-up. A
        full batch means a flood: the socket then rests HANDSHAKE_PAUSE, and its small
        queue overflows in the kernel meanwhile, while the data socket is served."""
        assert self._handshake_udp is not None and self.core is not None and self._loop is not None
        datagrams = self._handshake_udp.receive_batch(HANDSHAKE_BATCH)
        if datagrams:
            self.core.datagrams_received(datagrams, self._now())
            self._transmit()
        if len(datagrams) == HANDSHAKE_BATCH:
            self.handshake_pauses += 1
            self._loop.remove_reader(self._handshake_udp.fileno())
            self._handshake_rest = self._loop.call_later(HANDSHAKE_PAUSE, self._handshakes_rested)

    def _handshakes_rested(self) -> None:
        self._handshake_rest = None
        if self._handshake_udp is not None and self._loop is not None:
            self._loop.add_reader(self._handshake_udp.fileno(), self._handshakes_readable)

    def _traffic(self, now: float) -> None:
        """Frames went through naas0: poll for the next POLL_LINGER seconds."""
        self._traffic_at = now
        if self._poll is None and self.poll_interval > 0:
            assert self._loop is not None
            self._poll = self._loop.call_later(self.poll_interval, self._poll_fired)

    def _poll_fired(self) -> None:
        self._poll = None
        if self._now() - self._traffic_at > POLL_LINGER:
            return  # idle: the next frame through naas0 starts polling again
        assert self.core is not None and self._loop is not None
        if not self._read_lately():
            self.polls += 1
            self._tap_readable()
            self._udp_readable()
            if self._poll is None:  # found nothing (a read that finds traffic arms the next poll)
                self.warm_ups += 1  # the path is cold only when nothing went through
                if not self.core.warm_up(self._now()):
                    self.warm_ups_failed += 1
                self._warm_kernel_path()
        if self._poll is None:
            self._poll = self._loop.call_later(self.poll_interval, self._poll_fired)

    def _bind_warm_socket(self, udp: LinuxUdpSocket) -> LinuxUdpSocket | None:
        try:
            return udp.loopback_twin()
        except OSError as exc:
            log.info("polls do not warm the kernel's UDP path: no loopback socket (%s)", exc.strerror or exc)
            return None

    def _warm_kernel_path(self) -> None:
        """Echo a ping-sized datagram through loopback (module docstring). If it does not
        come back (loopback down in this namespace, a firewall rule), stop trying."""
        warm = self._warm_socket
        if warm is None:
            return
        if warm.echo(WARM_DATAGRAM):
            self.kernel_warm_ups += 1
            return
        log.info(
            "polls stop warming the kernel's UDP path: a datagram to %s:%d did not come back",
            *warm.local_address,
        )
        warm.close()
        self._warm_socket = None

    def _read_lately(self) -> bool:
        """Did a wake-up read something from naas0 or the socket less than one poll
        interval ago? Then it kept the path as warm as this poll would: the poll does
        nothing, and the next one comes on the same grid (docs/performance.md, "Polls a
        frame makes needless")."""
        return monotonic() - max(self._tap_done_at, self._udp_done_at) < self.poll_interval

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _timer_fired(self) -> None:
        assert self.core is not None
        now = self._now()
        self._timer = None
        self.core.timer_fired(now)
        self._transmit()
        if self._members_dirty and self._cache_saves.due(now):
            self._save_members()
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        assert self.core is not None
        deadline = self.core.next_deadline()
        if self._members_dirty:
            deadline = min(deadline, self._cache_saves.next_at)
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = max(deadline, now)
        assert self._loop is not None
        self._timer = self._loop.call_at(self._timer_at, self._timer_fired)

    def _transmit(self) -> bool:
        """Send and write what the core produced; True if frames went into naas0."""
        core = self.core
        assert core is not None and self._udp is not None and self._tap is not None
        datagrams = core.take_datagrams()
        if datagrams:
            if self._udp.gso and len(datagrams) > 1:
                self._udp.send_coalesced(coalesce(datagrams))
            else:
                self._udp.send_batch(datagrams)
        runs = core.take_runs()
        if runs:
            self._udp.send_coalesced(runs)
        frames = core.take_frames()
        if frames:
            self._tap.write_batch(frames)
        events = core.take_events()
        if events:
            for event in events:
                self._log_event(event)
        self._arm_timer(self._now())
        return bool(frames)

    def _offload_summary(self) -> str:
        """Which offloads are in use, e.g. ``tso+csum,gso,gro`` or ``none``."""
        assert self._tap is not None and self._udp is not None
        used = [("tso+csum", self._tap.offload), ("gso", self._udp.gso), ("gro", self._udp.gro)]
        return ",".join(name for name, on in used if on) or "none"

    def _log_event(self, event: NodeEvent) -> None:
        if event.kind in ("member_learned", "member_updated", "member_revoked"):
            self._members_dirty = True
        if event.kind == "document":
            self._save_document()
            log.info("network document %s", event.detail)
            return
        if event.kind == "revoked":  # said once, as the agent's exit message (run_until_stopped)
            self.revoked = True
            self.stop()
            return
        log.info("%s peer=%s node_id=%d %s", event.kind, event.name, event.node_id, event.detail)

    def topology(self) -> Topology:
        """This member's view of the mesh now (core/topology.py)."""
        return self._topology()

    def _topology(self) -> Topology:
        assert self.core is not None
        return self.core.topology(self._now())

    def _handshake_status(self) -> dict[str, Any]:
        """The responder's flood protection (core/cookie.py), for `naas status --json`."""
        assert self.core is not None
        cookies = self.core.cookies
        return {
            "under_load": cookies.under_load(self._now()),
            "admitted": cookies.handshakes_admitted,
            "cookies_sent": cookies.cookies_sent,
            "hosts_tracked": cookies.sources_tracked,
            "own_socket": self._handshake_udp is not None,
            "pauses": self.handshake_pauses,
        }

    async def _control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.core is not None
        cmd = request.get("cmd")
        if cmd == "status":
            status = self.core.status(self._now())
            status["agent"] = {
                "pid": os.getpid(),
                "interface": self.interface,
                "listen": f"{self.listen_host}:{self.core.network.mesh_port}",
                "offloads": self._offload_summary() if self._udp and self._tap else "none",
                "poll_ms": self.poll_interval * 1000,
                "polls": self.polls,
                "warm_ups": self.warm_ups,
                "warm_ups_failed": self.warm_ups_failed,
                "kernel_warm_ups": self.kernel_warm_ups,
                "express_sent": self.express_sent,
                "express_received": self.express_received,
                "udp_send_drops": {k.value: v for k, v in self._udp.drops.items()} if self._udp else {},
                "tap_write_drops": {k.value: v for k, v in self._tap.drops.items()} if self._tap else {},
                "handshakes": self._handshake_status(),
                "certificate": self._certificate_status(),
            }
            if self.extra_status is not None:
                status.update(self.extra_status())
            return {"ok": True, "status": status}
        if cmd == "shutdown":
            asyncio.get_running_loop().call_soon(self.stop)
            return {"ok": True}
        if cmd == "renew":
            if self.renewal is None:
                return {"ok": False, "error": "this agent does not renew its certificate"}
            try:
                renewed = await self.renewal.renew_now()
            except Exception as exc:
                return {"ok": False, "error": f"renewal failed: {exc}"}
            return {"ok": True, "not_after": renewed.not_after}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the agent's coroutine on uvloop (libuv), or on asyncio's own loop where uvloop
    is missing or ``NAAS_EVENT_LOOP=asyncio``. Every frame costs at least one wake-up of
    the loop, and uvloop's costs a fraction of asyncio's (docs/performance.md)."""
    if os.environ.get("NAAS_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
