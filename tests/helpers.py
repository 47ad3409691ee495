"""Builders shared by the pure tests: a CA, members, and NodeCores wired together."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from naas.core.crypto import (
    ed25519_public,
    sign_certificate,
    x25519_public,
)
from naas.core.node import LocalIdentity, NodeCore
from naas.model.certificate import Certificate
from naas.model.ids import Endpoint, NodeId
from naas.model.network import MemberRecord, NetworkInfo

NETWORK = "test-net"
NOW_UNIX = 1_800_000_000


class SeededRandom:
    """A deterministic ``random_bytes`` for cores under test."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def __call__(self, count: int) -> bytes:
        return self._rng.randbytes(count)


@dataclass
class Authority:
    seed: int = 1
    private: bytes = b""

    def __post_init__(self) -> None:
        self.private = random.Random(self.seed).randbytes(32)

    @property
    def public(self) -> bytes:
        return ed25519_public(self.private)

    def identity(
        self,
        name: str,
        node_id: int,
        ip: str | None = None,
        *,
        pop: bool = False,
        network: str = NETWORK,
        not_before: int = NOW_UNIX - 10,
    ) -> LocalIdentity:
        rng = random.Random(f"{self.seed}-{name}-{node_id}-{not_before}")
        static_private, signing_private = rng.randbytes(32), rng.randbytes(32)
        cert = Certificate(
            network=network,
            name=name,
            node_id=NodeId(node_id),
            is_pop=pop,
            static_public=x25519_public(static_private),
            signing_public=ed25519_public(signing_private),
            not_before=not_before,
            not_after=NOW_UNIX + 86400 * 365,
            ip=IPv4Interface(ip) if ip else None,
        )
        from dataclasses import replace

        cert = replace(cert, signature=sign_certificate(self.private, cert))
        return LocalIdentity(cert, static_private, signing_private)

    def network(self, subnet: str | None = "10.77.0.0/16") -> NetworkInfo:
        return NetworkInfo(
            name=NETWORK,
            mesh_port=5640,
            ca_public=self.public,
            pops=(),
            subnet=IPv4Network(subnet) if subnet else None,
        )


@dataclass
class SimNet:
    """Cores exchanging datagrams in memory, with seeded loss/duplication/reorder.

    Each core has the address ("10.0.0.<n>", 5640). ``cut`` holds address pairs whose
    datagrams are dropped (both directions).
    """

    cores: dict[str, NodeCore] = field(default_factory=dict)
    addresses: dict[tuple[str, int], str] = field(default_factory=dict)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int = 7
    now: float = 1000.0
    delivered_frames: dict[str, list[bytes]] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    wire_log: list[bytes] = field(default_factory=list)
    # datagrams sent to an address no core has (an attacker's, say), by address
    unrouted: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add(
        self,
        name: str,
        identity: LocalIdentity,
        network: NetworkInfo,
        members: Iterable[MemberRecord] = (),
        mtu: int = 1400,
        tap_offload: bool = False,
    ) -> NodeCore:
        core = NodeCore(
            identity,
            network,
            random_bytes=SeededRandom(zlib.crc32(name.encode()) ^ self.seed),
            now=self.now,
            wall_offset=NOW_UNIX - self.now,
            mtu=mtu,
            members=members,
            tap_offload=tap_offload,
        )
        self.cores[name] = core
        self.addresses[self.address_of(name)] = name
        self.delivered_frames[name] = []
        return core

    def address_of(self, name: str) -> tuple[str, int]:
        """Core n (in the order added) lives at 10.0.0.n:5640."""
        return (f"10.0.0.{list(self.cores).index(name) + 1}", 5640)

    def record(self, name: str) -> MemberRecord:
        core = self.cores[name]
        host, port = self.address_of(name)
        return MemberRecord(core.identity.certificate, (Endpoint(host, port),))

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Advance time, firing timers and moving datagrams, for ``seconds``."""
        end = self.now + seconds
        while self.now < end:
            for core in self.cores.values():
                if core.next_deadline() <= self.now:
                    core.timer_fired(self.now)
            self.pump()
            self.now += step

    def pump(self, max_rounds: int = 50) -> None:
        for _ in range(max_rounds):
            moved = False
            for name, core in self.cores.items():
                self.delivered_frames[name].extend(core.take_frames())
                core.take_events()
                batch = core.take_all_datagrams()
                if not batch:
                    continue
                moved = True
                source = self.address_of(name)
                inbound: dict[str, list[tuple[bytes, tuple[str, int]]]] = {}
                for datagram, address in batch:
                    target = self.addresses.get(address)
                    if target is None:
                        self.unrouted.setdefault(address, []).append(datagram)
                        continue
                    if frozenset((name, target)) in self.cut:
                        continue
                    self.wire_log.append(datagram)
                    if self.rng.random() < self.loss:
                        continue
                    copies = 2 if self.rng.random() < self.duplicate else 1
                    inbound.setdefault(target, []).extend([(datagram, source)] * copies)
                for target, datagrams in inbound.items():
                    if self.reorder:
                        self.rng.shuffle(datagrams)
                    self.cores[target].datagrams_received(datagrams, self.now)
            if not moved:
                return
