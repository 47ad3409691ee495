"""One transport session between two members: the keys a Noise IK handshake agreed.

A session seals inner payloads into DATA datagrams and opens received ones. The send
counter doubles as the AEAD nonce and is never reused; received counters go through
an anti-replay window *after* the tag verified, so forged packets cannot move it.
A responder's session starts unconfirmed: it may receive, but it sends nothing until
the initiator proved it holds the keys by sending on it (WireGuard's key confirmation).
"""

from __future__ import annotations

from naas.core.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_TIME
from naas.core.crypto import Aead, AuthenticationError
from naas.core.fragments import Reassembly, pack_runs
from naas.core.handshake import TransportKeys
from naas.core.replay import ReplayWindow
from naas.core.wire import (
    DATA_AAD_SLICE,
    SEALED_HEADER,
    TYPE_DATA,
    TYPE_FRAGMENT,
    BadPacket,
    DropReason,
)


class Session:
    __slots__ = (
        "_receive",
        "_replay",
        "_send",
        "confirmed",
        "created_at",
        "is_initiator",
        "local_index",
        "lost_reported",
        "reassembly",
        "remote_index",
        "send_counter",
    )

    def __init__(
        self,
        keys: TransportKeys,
        *,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
        now: float,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.confirmed = is_initiator
        self.created_at = now
        self.send_counter = 0
        self._send = Aead(keys.send_key)
        self._receive = Aead(keys.receive_key)
        self._replay = ReplayWindow()
        self.lost_reported = 0  # of `lost`, what the node has counted already (core/loss.py)
        self.reassembly: Reassembly | None = None  # made by the node at the first fragment

    def age(self, now: float) -> float:
        return now - self.created_at

    def usable(self, now: float) -> bool:
        return now - self.created_at < REJECT_AFTER_TIME and self.send_counter < REJECT_AFTER_MESSAGES

    def wants_rekey(self, now: float) -> bool:
        return self.is_initiator and now - self.created_at >= REKEY_AFTER_TIME

    def seal(self, dst_node: int, src_node: int, hop_limit: int, inner: bytes) -> bytes:
        """One DATA datagram carrying ``inner``."""
        header, sealed = self._seal(TYPE_DATA, dst_node, src_node, hop_limit, inner)
        return header + sealed

    def seal_runs(
        self, dst_node: int, src_node: int, hop_limit: int, inner: bytes, piece_size: int
    ) -> list[bytes]:
        """FRAGMENT datagrams carrying ``inner``, packed into GSO runs (core/fragments.py)."""
        header, sealed = self._seal(TYPE_FRAGMENT, dst_node, src_node, hop_limit, inner)
        return pack_runs(header, sealed, piece_size)

    def _seal(
        self, kind: int, dst_node: int, src_node: int, hop_limit: int, inner: bytes
    ) -> tuple[bytes, bytes]:
        """The next counter's 24-byte header and ``inner`` sealed under it."""
        counter = self.send_counter
        self.send_counter = counter + 1
        header = SEALED_HEADER.pack(kind, hop_limit, 0, dst_node, src_node, self.remote_index, counter)
        return header, self._send.seal(counter, inner, header[DATA_AAD_SLICE])

    @property
    def lost(self) -> int:
        """Messages of this session that never arrived (so far): counters skipped, not late."""
        return self._replay.skipped - self._replay.late

    def already_opened(self, counter: int) -> bool:
        """A message with this counter was opened, or is too old to be (a late duplicate)."""
        return self._replay.seen(counter)

    def open_sealed(self, aad: bytes, counter: int, sealed: bytes, now: float) -> bytes:
        """The inner payload of one message: a DATA datagram's, or joined FRAGMENT pieces'."""
        if now - self.created_at >= REJECT_AFTER_TIME:
            raise BadPacket(DropReason.SESSION_EXPIRED)
        try:
            inner = self._receive.open(counter, sealed, aad)
        except AuthenticationError:
            raise BadPacket(DropReason.DECRYPT_FAILED) from None
        if not self._replay.accept(counter):
            raise BadPacket(DropReason.REPLAYED)
        self.confirmed = True
        return inner
