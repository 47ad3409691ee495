"""FRAGMENT datagrams: cutting a sealed message into GSO runs, recognising whole runs,
reassembling pieces that arrive apart, and coalescing datagrams into runs to send."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from naas.core.fragments import (
    FRAGMENT_HEADER_LEN,
    MAX_MESSAGE_BYTES,
    MAX_PARTIAL,
    MAX_PIECES,
    MAX_RUN_BYTES,
    MAX_RUN_SEGMENTS,
    PIECE_HEAD,
    Reassembly,
    datagrams_of,
    one_run_limit,
    pack_runs,
    piece_size_for,
    run_span,
)
from naas.core.wire import (
    AEAD_TAG_LEN,
    DATA_HEAD,
    DATA_HEADER_LEN,
    DATA_OVERHEAD,
    DEFAULT_HOP_LIMIT,
    ETHERNET_HEADER_LEN,
    OUTER,
    TYPE_DATA,
    TYPE_FRAGMENT,
    BadPacket,
    DropReason,
)
from naas.daemon.udp import coalesce

PIECE = piece_size_for(1400)  # 1429: a FRAGMENT datagram of 1455 bytes
SEGMENT = FRAGMENT_HEADER_LEN + PIECE


def header(counter: int = 7, kind: int = TYPE_FRAGMENT, dst: int = 2, src: int = 1) -> bytes:
    return OUTER.pack(kind, DEFAULT_HOP_LIMIT, 0, dst, src) + DATA_HEAD.pack(0xA1B2C3D4, counter)


def sealed_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def pieces_of(sealed: bytes, piece_size: int) -> list[bytes]:
    return [sealed[at : at + piece_size] for at in range(0, len(sealed), piece_size)]


# -- sizes ------------------------------------------------------------------------------------


def test_piece_size_makes_fragments_as_large_as_full_data_datagrams() -> None:
    assert FRAGMENT_HEADER_LEN == DATA_HEADER_LEN + PIECE_HEAD.size == 26
    for mtu in (576, 1280, 1400, 1420, 8950):
        data_datagram = DATA_OVERHEAD + mtu + ETHERNET_HEADER_LEN
        assert FRAGMENT_HEADER_LEN + piece_size_for(mtu) == data_datagram
    assert SEGMENT == 1455


def test_one_run_limit_is_exactly_what_fits_one_run() -> None:
    for piece_size in (PIECE, 100, 8000):
        limit = one_run_limit(piece_size)
        assert len(pack_runs(header(), sealed_of(limit + AEAD_TAG_LEN), piece_size)) == 1
        assert len(pack_runs(header(), sealed_of(limit + AEAD_TAG_LEN + 1), piece_size)) == 2
    # 45 datagrams of 1455 bytes fit a 65507-byte GSO send, 46 do not
    assert one_run_limit(PIECE) == 45 * PIECE - AEAD_TAG_LEN
    # small pieces: the segment count is the limit
    assert one_run_limit(100) == MAX_RUN_SEGMENTS * 100 - AEAD_TAG_LEN


# -- pack_runs --------------------------------------------------------------------------------


def check_runs(runs: list[bytes], head: bytes, sealed: bytes, piece_size: int) -> None:
    segment = FRAGMENT_HEADER_LEN + piece_size
    count = -(-len(sealed) // piece_size)
    datagrams: list[bytes] = []
    for number, run in enumerate(runs):
        assert isinstance(run, bytes)
        assert len(run) <= MAX_RUN_BYTES
        assert -(-len(run) // segment) <= MAX_RUN_SEGMENTS
        if number < len(runs) - 1:
            assert len(run) % segment == 0, "only the last run may end short"
        datagrams += datagrams_of(run, segment)
    assert len(datagrams) == count
    for index, datagram in enumerate(datagrams):
        if index < count - 1:
            assert len(datagram) == segment
        else:
            assert FRAGMENT_HEADER_LEN < len(datagram) <= segment
        assert datagram[:DATA_HEADER_LEN] == head
        assert PIECE_HEAD.unpack_from(datagram, DATA_HEADER_LEN) == (index, count)
    assert b"".join(d[FRAGMENT_HEADER_LEN:] for d in datagrams) == sealed


@pytest.mark.parametrize(
    "size",
    [1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 45 * PIECE, 45 * PIECE + 1, 64 * 1024, 65535 + 27],
)
def test_pack_runs_cuts_and_packs(size: int) -> None:
    head = header(counter=size)
    sealed = sealed_of(size, seed=size)
    runs = pack_runs(head, sealed, PIECE)
    check_runs(runs, head, sealed, PIECE)
    count = -(-size // PIECE)
    assert len(runs) == -(-count // 45)  # 45 full segments per 65507-byte run


def test_pack_runs_of_64_kib_is_a_full_run_and_the_rest() -> None:
    sealed = sealed_of(64 * 1024)  # 46 pieces
    runs = pack_runs(header(), sealed, PIECE)
    assert [-(-len(run) // SEGMENT) for run in runs] == [45, 1]
    assert len(runs[0]) == 45 * SEGMENT
    assert len(runs[1]) == FRAGMENT_HEADER_LEN + len(sealed) - 45 * PIECE


@pytest.mark.parametrize("piece_size", [1, 10, 100, 500, 1000])
def test_pack_runs_with_small_pieces_respects_the_segment_limit(piece_size: int) -> None:
    size = piece_size * MAX_PIECES - (piece_size // 2)  # the most pieces there may be
    sealed = sealed_of(size, seed=piece_size)
    runs = pack_runs(header(), sealed, piece_size)
    check_runs(runs, header(), sealed, piece_size)
    segment = FRAGMENT_HEADER_LEN + piece_size
    per_run = MAX_RUN_SEGMENTS if piece_size <= 500 else MAX_RUN_BYTES // segment
    assert [len(run) // segment for run in runs[:-1]] == [per_run] * (len(runs) - 1)
    assert len(runs) == -(-MAX_PIECES // per_run)


@pytest.mark.parametrize("piece_size", [1, 10, PIECE])
def test_pack_runs_refuses_more_than_max_pieces(piece_size: int) -> None:
    pack_runs(header(), sealed_of(MAX_PIECES * piece_size), piece_size)  # 255 pieces: fine
    with pytest.raises(ValueError):
        pack_runs(header(), sealed_of(MAX_PIECES * piece_size + 1), piece_size)


# -- run_span ---------------------------------------------------------------------------------


def test_run_span_of_a_whole_run() -> None:
    for size in (PIECE + 1, 10 * PIECE, 45 * PIECE - 3):
        sealed = sealed_of(size, seed=size)
        [run] = pack_runs(header(), sealed, PIECE)
        count = -(-size // PIECE)
        assert run_span(run, SEGMENT) == (0, count, count, sealed)


def test_run_span_of_the_runs_of_a_long_message() -> None:
    sealed = sealed_of(46 * PIECE + 100)  # 47 pieces: runs of 45 and 2
    first, second = pack_runs(header(), sealed, PIECE)
    count = -(-len(sealed) // PIECE)
    assert run_span(first, SEGMENT) == (0, count, 45, sealed[: 45 * PIECE])
    assert run_span(second, SEGMENT) == (45, count, count - 45, sealed[45 * PIECE :])


def test_run_span_of_a_middle_part() -> None:
    sealed = sealed_of(30 * PIECE + 77)
    [run] = pack_runs(header(), sealed, PIECE)
    part = run[3 * SEGMENT : 10 * SEGMENT]
    assert run_span(part, SEGMENT) == (3, 31, 7, sealed[3 * PIECE : 10 * PIECE])
    tail = run[29 * SEGMENT :]  # pieces 29 and 30 (the short last one)
    assert run_span(tail, SEGMENT) == (29, 31, 2, sealed[29 * PIECE :])


def test_run_span_refuses_what_is_not_one_message_in_order() -> None:
    sealed = sealed_of(10 * PIECE)
    [run] = pack_runs(header(counter=5), sealed, PIECE)
    last = 9 * SEGMENT
    assert run_span(run, SEGMENT) is not None

    # a single datagram, or a run of one whole segment
    assert run_span(run[:SEGMENT], SEGMENT) is None
    assert run_span(run[:100], SEGMENT) is None

    # the last piece of another message (another counter)
    other = bytearray(run)
    other[last : last + DATA_HEADER_LEN] = header(counter=6)
    assert run_span(bytes(other), SEGMENT) is None

    # the last piece's index is not the one its place says
    wrong_index = bytearray(run)
    wrong_index[last + DATA_HEADER_LEN] = 8
    assert run_span(bytes(wrong_index), SEGMENT) is None

    # ... nor its count
    wrong_count = bytearray(run)
    wrong_count[last + DATA_HEADER_LEN + 1] = 11
    assert run_span(bytes(wrong_count), SEGMENT) is None

    # more pieces than the count says
    too_many = bytearray(run)
    too_many[25] = too_many[last + 25] = 9
    assert run_span(bytes(too_many), SEGMENT) is None

    # a last segment with a header and no piece
    assert run_span(run[: 2 * SEGMENT] + run[last : last + FRAGMENT_HEADER_LEN], SEGMENT) is None

    # a segment size that cannot hold a piece
    assert run_span(run, FRAGMENT_HEADER_LEN) is None


def test_run_span_of_data_datagrams_is_none() -> None:
    rng = random.Random(3)
    for trial in range(50):
        run = b"".join(
            header(counter=100 + trial + n, kind=TYPE_DATA) + rng.randbytes(1431) for n in range(5)
        )
        assert run_span(run, 1455) is None


# -- Reassembly -------------------------------------------------------------------------------


def test_reassembly_in_any_order_gives_the_message_once_at_its_last_piece() -> None:
    rng = random.Random(2024)
    for trial in range(30):
        count = rng.randrange(2, 60)
        sealed = sealed_of(count * 50 - rng.randrange(50), seed=trial)
        pieces = pieces_of(sealed, 50)
        assert len(pieces) == count
        order = list(range(count))
        rng.shuffle(order)
        drops: Counter[DropReason] = Counter()
        reassembly = Reassembly(drops)
        results = [reassembly.add(trial, index, count, pieces[index]) for index in order]
        assert results[:-1] == [None] * (count - 1)
        assert results[-1] == sealed
        assert len(reassembly) == 0
        assert not drops


def test_reassembly_ignores_duplicates() -> None:
    sealed = sealed_of(500)
    pieces = pieces_of(sealed, 100)
    reassembly = Reassembly(Counter())
    assert reassembly.add(1, 0, 5, pieces[0]) is None
    assert reassembly.add(1, 0, 5, pieces[0]) is None
    assert reassembly.add(1, 0, 5, b"forged") is None  # the first copy stays
    for index in (3, 1, 3, 2):
        assert reassembly.add(1, index, 5, pieces[index]) is None
    assert reassembly.add(1, 4, 5, pieces[4]) == sealed
    assert len(reassembly) == 0


def test_reassembly_of_spans_and_single_pieces() -> None:
    sealed = sealed_of(20 * 64 + 9)
    pieces = pieces_of(sealed, 64)
    count = len(pieces)  # 21
    reassembly = Reassembly(Counter())
    assert reassembly.add(9, 10, count, b"".join(pieces[10:15]), 5) is None
    assert reassembly.add(9, 20, count, pieces[20]) is None
    assert reassembly.add(9, 0, count, b"".join(pieces[0:8]), 8) is None
    assert reassembly.add(9, 12, count, b"".join(pieces[12:14]), 2) is None  # inside a span: duplicate
    assert reassembly.add(9, 8, count, pieces[8]) is None
    for index in range(15, 20):
        assert reassembly.add(9, index, count, pieces[index]) is None
    assert reassembly.add(9, 9, count, pieces[9]) == sealed


def test_reassembly_of_a_long_message_in_two_gro_runs() -> None:
    sealed = sealed_of(46 * PIECE + 100)
    runs = pack_runs(header(), sealed, PIECE)
    reassembly = Reassembly(Counter())
    spans = [run_span(run, SEGMENT) for run in runs]
    assert all(span is not None for span in spans)
    first, second = (span for span in spans if span is not None)
    assert reassembly.add(7, first[0], first[1], first[3], first[2]) is None
    assert reassembly.add(7, second[0], second[1], second[3], second[2]) == sealed


@pytest.mark.parametrize(
    ("first", "count", "span", "pieces"),
    [
        (0, 0, b"x", 1),  # no pieces at all
        (0, MAX_PIECES + 1, b"x", 1),
        (5, 5, b"x", 1),  # index past the count
        (4, 5, b"xx", 2),  # a span past the count
        (0, 5, b"x", 0),
        (0, 5, b"", 1),  # an empty piece
        (200, 10, b"x", 1),
    ],
)
def test_reassembly_refuses_bad_index_or_count(first: int, count: int, span: bytes, pieces: int) -> None:
    drops: Counter[DropReason] = Counter()
    reassembly = Reassembly(drops)
    with pytest.raises(BadPacket) as caught:
        reassembly.add(3, first, count, span, pieces)
    assert caught.value.reason is DropReason.BAD_FRAGMENT
    assert len(reassembly) == 0
    assert not drops


def test_reassembly_refuses_a_changed_count_and_keeps_the_message() -> None:
    pieces = pieces_of(sealed_of(400), 100)
    reassembly = Reassembly(Counter())
    assert reassembly.add(11, 0, 4, pieces[0]) is None
    for count in (3, 5, 1):
        with pytest.raises(BadPacket) as caught:
            reassembly.add(11, 1, count, pieces[1])
        assert caught.value.reason is DropReason.BAD_FRAGMENT
    assert reassembly.add(11, 1, 4, pieces[1]) is None
    assert reassembly.add(11, 2, 4, pieces[2]) is None
    assert reassembly.add(11, 3, 4, pieces[3]) == b"".join(pieces)


def test_reassembly_evicts_the_oldest_message_in_progress() -> None:
    drops: Counter[DropReason] = Counter()
    reassembly = Reassembly(drops)
    messages = {counter: pieces_of(sealed_of(300, seed=counter), 100) for counter in range(MAX_PARTIAL + 2)}
    for counter in range(MAX_PARTIAL):
        assert reassembly.add(counter, 0, 3, messages[counter][0]) is None
    assert len(reassembly) == MAX_PARTIAL
    assert drops[DropReason.FRAGMENTS_INCOMPLETE] == 0
    # more pieces of a message in progress start nothing
    assert reassembly.add(3, 1, 3, messages[3][1]) is None
    assert drops[DropReason.FRAGMENTS_INCOMPLETE] == 0
    # one more message: counter 0, the oldest, is given up
    assert reassembly.add(MAX_PARTIAL, 0, 3, messages[MAX_PARTIAL][0]) is None
    assert len(reassembly) == MAX_PARTIAL
    assert drops[DropReason.FRAGMENTS_INCOMPLETE] == 1
    # its remaining pieces now start it over (evicting counter 1), and it never completes
    assert reassembly.add(0, 1, 3, messages[0][1]) is None
    assert reassembly.add(0, 2, 3, messages[0][2]) is None
    assert drops[DropReason.FRAGMENTS_INCOMPLETE] == 2
    # the others are intact: counter 3 completes
    assert reassembly.add(3, 2, 3, messages[3][2]) == b"".join(messages[3])
    assert len(reassembly) == MAX_PARTIAL - 1


def test_reassembly_gives_up_a_message_larger_than_any_we_send() -> None:
    drops: Counter[DropReason] = Counter()
    reassembly = Reassembly(drops)
    piece = bytes(60000)
    assert reassembly.add(9, 0, 4, piece) is None
    assert reassembly.add(9, 1, 4, piece) is None
    with pytest.raises(BadPacket) as raised:
        reassembly.add(9, 2, 4, piece)  # 180 000 bytes held: over MAX_MESSAGE_BYTES
    assert raised.value.reason is DropReason.BAD_FRAGMENT
    assert 2 * len(piece) <= MAX_MESSAGE_BYTES < 3 * len(piece)
    assert len(reassembly) == 0, "nothing of it is kept"


def test_reassembly_memory_stays_bounded() -> None:
    rng = random.Random(99)
    drops: Counter[DropReason] = Counter()
    reassembly = Reassembly(drops)
    completed = refused = 0
    for _ in range(5000):
        counter = rng.randrange(40)
        count = rng.randrange(1, 6)
        first = rng.randrange(count)
        pieces = rng.randrange(1, count - first + 1)
        try:
            if (
                reassembly.add(counter, first, count, rng.randbytes(rng.randrange(1, 200)), pieces)
                is not None
            ):
                completed += 1
        except BadPacket as error:
            assert error.reason is DropReason.BAD_FRAGMENT  # a count changed
            refused += 1
        assert len(reassembly) <= MAX_PARTIAL
        assert all(len(entry[0]) <= MAX_PIECES for entry in reassembly._partial.values())
    assert completed > 0 and refused > 0
    assert drops[DropReason.FRAGMENTS_INCOMPLETE] > 100
    assert set(drops) == {DropReason.FRAGMENTS_INCOMPLETE}


# -- datagrams_of and coalesce ----------------------------------------------------------------


def test_datagrams_of_splits_runs_back() -> None:
    rng = random.Random(5)
    for _ in range(100):
        segment = rng.randrange(1, 2000)
        datagrams = [rng.randbytes(segment) for _ in range(rng.randrange(0, 20))]
        datagrams.append(rng.randbytes(rng.randrange(1, segment + 1)))
        assert datagrams_of(b"".join(datagrams), segment) == datagrams
    assert datagrams_of(b"abc", 3) == [b"abc"]
    assert datagrams_of(b"abc", 10) == [b"abc"]


A = ("10.0.0.1", 5640)
B = ("10.0.0.2", 5640)


def flatten(runs: list[tuple[bytes, tuple[str, int], int]]) -> list[tuple[bytes, tuple[str, int]]]:
    return [(datagram, to) for run, to, segment in runs for datagram in datagrams_of(run, segment)]


def test_coalesce_groups_same_destination_and_size() -> None:
    same = [(bytes([n]) * 100, A) for n in range(5)]
    runs = coalesce(same)
    assert runs == [(b"".join(d for d, _ in same), A, 100)]


def test_coalesce_lets_only_the_last_of_a_group_be_shorter() -> None:
    datagrams = [(b"a" * 100, A), (b"b" * 100, A), (b"c" * 60, A), (b"d" * 60, A), (b"e" * 60, A)]
    runs = coalesce(datagrams)
    assert [(len(run), to, segment) for run, to, segment in runs] == [(260, A, 100), (120, A, 60)]
    assert flatten(runs) == datagrams
    # a shorter one, then an even shorter one: a new group each time
    shrinking = [(b"x" * size, A) for size in (100, 90, 80, 70)]
    runs = coalesce(shrinking)
    assert [(len(run), segment) for run, _, segment in runs] == [(190, 100), (150, 80)]
    assert flatten(runs) == shrinking


def test_coalesce_starts_a_new_group_on_another_destination_or_a_larger_datagram() -> None:
    datagrams = [
        (b"1" * 50, A),
        (b"2" * 50, B),
        (b"3" * 50, B),
        (b"4" * 50, A),
        (b"5" * 80, A),
        (b"6" * 80, A),
    ]
    runs = coalesce(datagrams)
    assert [(len(run), to, segment) for run, to, segment in runs] == [
        (50, A, 50),
        (100, B, 50),
        (50, A, 50),
        (160, A, 80),
    ]
    assert flatten(runs) == datagrams


def test_coalesce_respects_the_segment_limit() -> None:
    datagrams = [(n.to_bytes(2, "big") * 50, A) for n in range(3 * MAX_RUN_SEGMENTS + 5)]
    runs = coalesce(datagrams)
    assert [len(run) // 100 for run, _, _ in runs] == [MAX_RUN_SEGMENTS] * 3 + [5]
    assert flatten(runs) == datagrams


def test_coalesce_respects_the_byte_limit() -> None:
    size = 1455
    datagrams = [(bytes([n % 256]) * size, A) for n in range(100)]
    runs = coalesce(datagrams)
    per_run = MAX_RUN_BYTES // size  # 45
    assert [len(run) // size for run, _, _ in runs] == [per_run, per_run, 100 - 2 * per_run]
    assert all(len(run) <= MAX_RUN_BYTES for run, _, _ in runs)
    assert flatten(runs) == datagrams
    # a short last one that would pass the limit is not taken in
    big = [(b"x" * 30000, A), (b"y" * 30000, A), (b"z" * 6000, A)]
    runs = coalesce(big)
    assert [(len(run), segment) for run, _, segment in runs] == [(60000, 30000), (6000, 6000)]


def test_coalesce_keeps_order_of_anything() -> None:
    rng = random.Random(11)
    for _ in range(200):
        datagrams = []
        for _ in range(rng.randrange(0, 120)):
            size = rng.choice([1455, 1455, 1455, 200, 80, rng.randrange(1, 65507)])
            datagrams.append((rng.randbytes(size), rng.choice([A, A, B])))
        runs = coalesce(datagrams)
        assert flatten(runs) == datagrams
        for run, _, segment in runs:
            assert len(run) <= MAX_RUN_BYTES
            assert -(-len(run) // segment) <= MAX_RUN_SEGMENTS
