"""Slow references for the checksum tests: RFC 1071 written word by word, and the
TCP/UDP pseudo-header, so the fast code in core/ is checked against something obvious."""

from __future__ import annotations

import struct


def reference_ones_sum(data: bytes) -> int:
    """The 16-bit ones' complement sum: add words with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes) -> int:
    """The Internet checksum: the ones' complement of the sum."""
    return ~reference_ones_sum(data) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, length: int, protocol: int = 6) -> bytes:
    """The IPv4 (4-byte addresses) or IPv6 pseudo-header a TCP or UDP checksum covers."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, protocol, length)
    return src + dst + struct.pack("!IxxxB", length, protocol)
