"""Messages bigger than a datagram: cutting a sealed message into FRAGMENT datagrams and joining them.

Theory of operation
-------------------
With offloads on, naas0 hands the agent TCP super-frames of up to 64 KiB. Cutting them
back into TCP segments would rewrite headers and checksums some 45 times per read. The
sender seals the whole super-frame as *one* message instead (one AEAD call, one counter)
and cuts the sealed bytes into pieces that fit the underlay:

    FRAGMENT datagram = outer header (12) | receiver index u32 | counter u64 | index u8 | count u8 | piece

The first 24 bytes are the header a DATA datagram of this message would carry, but for
the type byte, and bytes 2..24 are the AEAD's additional data, as for DATA. So relays
forward fragments like any other datagram, on the outer header, and the receiver
authenticates the message once, when it is whole. ``index`` and ``count`` are not
authenticated on their own: a forged one only makes the joined bytes fail the tag.

All pieces but the last have the same size, so the run of datagrams leaves in one UDP GSO
call (`pack_runs`), and a receiver with UDP GRO usually gets all of them back in one
buffer. `run_span` recognises that case and joins the pieces with no bookkeeping.
Otherwise (pieces one by one, or a run cut in two) a `Reassembly` collects them per
counter.

Bounds, since pieces are not authenticated until the message is whole: ``count`` is at
most MAX_PIECES, a message held for joining at most MAX_MESSAGE_BYTES, and a session
keeps at most MAX_PARTIAL messages in progress. When another starts, the oldest is
dropped and counted as ``fragments_incomplete``. Memory is thus at most MAX_PARTIAL x
MAX_MESSAGE_BYTES (1 MiB) per session, whatever a sender does. A message that is never
completed stays until it is pushed out, or its session ends.

Losing one piece loses the message. For TCP that is a whole super-frame, which the
receiver's SACKs then ask for again (docs/performance.md weighs this).
"""

from __future__ import annotations

import struct
from functools import cache
from itertools import chain

from naas.core.offload import VNET_HDR_LEN
from naas.core.wire import (
    AEAD_TAG_LEN,
    DATA_HEADER_LEN,
    DATA_OVERHEAD,
    ETHERNET_HEADER_LEN,
    MAX_DATAGRAM,
    BadPacket,
    DropReason,
)

# -- wire constants ---------------------------------------------------------------------------

PIECE_HEAD = struct.Struct("!BB")  # index, count: after the 24 bytes shared with DATA
FRAGMENT_HEADER_LEN = DATA_HEADER_LEN + PIECE_HEAD.size  # 26
MAX_PIECES = 255  # count is one byte
MAX_RUN_BYTES = MAX_DATAGRAM - 20 - 8  # one GSO send: the largest UDP payload over IPv4
MAX_RUN_SEGMENTS = 64  # the kernel's limit per GSO send is 64 (older) or 128 (newer)

# -- implementation bounds --------------------------------------------------------------------

MAX_PARTIAL = 8  # messages in progress per session
MAX_MESSAGE_BYTES = 128 * 1024  # a sealed message held for joining: a super-frame is ~64 KiB


def piece_size_for(mtu: int) -> int:
    """Piece bytes per FRAGMENT datagram: its datagram is as large as the largest DATA one."""
    return mtu + ETHERNET_HEADER_LEN + DATA_OVERHEAD - FRAGMENT_HEADER_LEN


def _pieces_per_run(piece_size: int) -> int:
    """FRAGMENT datagrams of ``piece_size`` pieces that one GSO send may carry."""
    return max(1, min(MAX_RUN_SEGMENTS, MAX_RUN_BYTES // (FRAGMENT_HEADER_LEN + piece_size)))


def one_run_limit(piece_size: int) -> int:
    """The largest inner payload that is sealed into one GSO run of pieces."""
    return _pieces_per_run(piece_size) * piece_size - AEAD_TAG_LEN


def gso_max_size_for(mtu: int) -> int:
    """naas0's gso_max_size: the largest IP packet whose OFFLOAD_FRAME seals into one run
    (inner = kind byte + virtio header + Ethernet header + IP packet)."""
    return one_run_limit(piece_size_for(mtu)) - 1 - VNET_HDR_LEN - ETHERNET_HEADER_LEN


def pack_runs(header: bytes, sealed: bytes, piece_size: int) -> list[bytes]:
    """The FRAGMENT datagrams of one sealed message, packed into GSO runs.

    ``header`` is the 24-byte header (type FRAGMENT) shared by every piece. Each run is
    a whole number of ``FRAGMENT_HEADER_LEN + piece_size`` segments but the last run,
    whose last segment may be shorter.
    """
    count = -(-len(sealed) // piece_size)
    if count > MAX_PIECES:
        raise ValueError(f"message of {len(sealed)} bytes needs {count} pieces")
    per_run = _pieces_per_run(piece_size)
    view = memoryview(sealed)
    # all C-level loops: one header per piece, the pieces as views, interleaved and joined
    heads = [header + index_count for index_count in _index_bytes(count)]
    pieces = [view[at : at + piece_size] for at in range(0, len(sealed), piece_size)]
    return [
        b"".join(chain.from_iterable(zip(heads[at : at + per_run], pieces[at : at + per_run], strict=True)))
        for at in range(0, count, per_run)
    ]


@cache
def _index_bytes(count: int) -> tuple[bytes, ...]:
    """The (index, count) bytes of each piece of a ``count``-piece message."""
    return tuple(PIECE_HEAD.pack(index, count) for index in range(count))


def datagrams_of(run: bytes | bytearray, segment: int) -> list[bytes]:
    """The datagrams of a coalesced run: ``segment`` bytes each, the last maybe shorter."""
    return [bytes(run[at : at + segment]) for at in range(0, len(run), max(segment, 1))]


def run_span(run: bytes, segment: int) -> tuple[int, int, int, bytes] | None:
    """``(first index, count, pieces, joined bytes)`` when ``run`` holds consecutive pieces
    of one message, in order, else None.

    That is what UDP GRO usually delivers: a message sent as one GSO run comes back as
    one. (The agent sets naas0's gso_max_size so that a super-frame seals into one run;
    a larger message takes two, or a run and a lone datagram.) The first and last headers
    are checked; a piece in between that belongs to another message makes the joined
    message fail its tag.
    """
    size = len(run)
    if segment <= FRAGMENT_HEADER_LEN or size <= segment:
        return None
    pieces = -(-size // segment)
    last = (pieces - 1) * segment
    first, count = run[24], run[25]
    if size - last <= FRAGMENT_HEADER_LEN or first + pieces > count:
        return None
    if run[last + 24] != first + pieces - 1 or run[last + 25] != count:
        return None
    if run[last + 2 : last + 24] != run[2:24]:
        return None
    view = memoryview(run)
    joined = b"".join(
        [view[at : at + segment - FRAGMENT_HEADER_LEN] for at in range(FRAGMENT_HEADER_LEN, size, segment)]
    )
    return first, count, pieces, joined


class Reassembly:
    """The messages of one session that arrive in more than one run (module docstring).

    A message in progress is a list of *spans*, keyed by the index of their first piece:
    one piece when datagrams arrive one by one, several when they came in a GRO run.
    """

    __slots__ = ("_drops", "_partial")

    def __init__(self, drops: dict[DropReason, int]) -> None:
        self._drops = drops  # the node's drop counters
        # counter -> (span bytes by first index, which pieces are in, [pieces missing, bytes held])
        self._partial: dict[int, tuple[dict[int, bytes], bytearray, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._partial)

    def add(self, counter: int, first: int, count: int, span: bytes, pieces: int = 1) -> bytes | None:
        """Remember ``pieces`` consecutive pieces from index ``first``, joined in ``span``;
        the whole message once its last piece is in, else None."""
        if not 0 < count <= MAX_PIECES or pieces < 1 or first + pieces > count or not span:
            raise BadPacket(DropReason.BAD_FRAGMENT, f"pieces {first}+{pieces} of {count}, {len(span)} bytes")
        entry = self._partial.get(counter)
        if entry is None:
            if len(self._partial) >= MAX_PARTIAL:
                del self._partial[next(iter(self._partial))]  # the oldest message in progress
                self._drops[DropReason.FRAGMENTS_INCOMPLETE] += 1
            entry = ({}, bytearray(count), [count, 0])
            self._partial[counter] = entry
        spans, have, missing = entry
        if len(have) != count:
            raise BadPacket(DropReason.BAD_FRAGMENT, f"count {count} after {len(have)}")
        if any(have[first : first + pieces]):
            return None  # a duplicate
        missing[1] += len(span)
        if missing[1] > MAX_MESSAGE_BYTES:  # not a message we would send: give it up
            del self._partial[counter]
            raise BadPacket(DropReason.BAD_FRAGMENT, f"message over {MAX_MESSAGE_BYTES} bytes")
        have[first : first + pieces] = b"\1" * pieces
        spans[first] = span
        missing[0] -= pieces
        if missing[0]:
            return None
        del self._partial[counter]
        return b"".join([spans[index] for index in sorted(spans)])
