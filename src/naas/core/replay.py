"""Sliding anti-replay window for the counters of received DATA packets.

Theory of operation
-------------------
Every DATA packet carries a 64-bit counter, which is also its AEAD nonce. The sender
counts up from 0; the network may lose, duplicate and reorder packets. After a packet has
been *authenticated* (never before: an unauthenticated counter could push the window
forward and make us drop genuine traffic), the receiver calls ``accept(counter)``:

* ``counter >= REJECT_AFTER_MESSAGES``: rejected. The sender must rekey long before
  (WireGuard's limit; it keeps the nonce far from 2**64 - 1, reserved by Noise 5.1).
* ``counter`` above the highest counter seen so far (``top``): accepted; the window
  slides forward so that ``counter`` becomes the new top.
* ``top - counter >= WINDOW``: too old to tell whether it was seen; rejected.
* otherwise the counter is inside the window: accepted once, rejected when seen again.

So the window remembers exactly the ``WINDOW`` counters ``top - WINDOW + 1 .. top``.
It also counts, for loss reports (core/loss.py), the counters the top jumped over
(``skipped``) and those of them accepted afterwards (``late``): ``skipped - late``
messages have not arrived (yet). Both change only off the in-order path.
This is the idea of RFC 6479 (and of WireGuard's replay filter): a ring indexed by the
low bits of the counter, where sliding forward clears the slots the new counters reuse,
so each check is O(1) and a jump forward costs at most one clear of the ring.

Unlike RFC 6479's bitmap of machine words, the ring keeps one byte per counter: in Python
a byte store is far cheaper than the shifts and masks of a bitmap (this runs per packet),
and the window is exact, with no block of slack. The price is ``WINDOW`` bytes (2 KiB)
per receiving session.
"""

from __future__ import annotations

from naas.core.constants import REJECT_AFTER_MESSAGES

# -- spec / implementation constants ------------------------------------------------------

WINDOW = 2048  # counters remembered behind the highest one; a power of two

_SLOT_MASK = WINDOW - 1
_ZEROS = memoryview(bytes(WINDOW))


class ReplayWindow:
    """Accepts each counter at most once, and none older than ``WINDOW`` behind the top.

    Counters are the unsigned 64-bit values of the wire (never negative).
    """

    __slots__ = ("_seen", "_top", "late", "skipped")

    def __init__(self) -> None:
        self._top = -1  # highest counter accepted so far
        self._seen = bytearray(WINDOW)  # slot counter % WINDOW: 1 if that counter was seen
        self.skipped = 0  # counters the top jumped over
        self.late = 0  # counters accepted below the top (reordered, or late pieces)

    @property
    def top(self) -> int:
        """The highest counter accepted so far, -1 before the first."""
        return self._top

    def accept(self, counter: int) -> bool:
        """True, and remember ``counter``, if it is new and recent enough; else False."""
        top = self._top
        if counter > top:
            if counter >= REJECT_AFTER_MESSAGES:
                return False
            if counter == top + 1:  # the common case: in order
                self._seen[counter & _SLOT_MASK] = 1
            else:
                self._slide(top, counter)
                self.skipped += counter - top - 1
            self._top = counter
            return True
        if top - counter >= WINDOW:
            return False
        seen = self._seen
        slot = counter & _SLOT_MASK
        if seen[slot]:
            return False
        seen[slot] = 1
        self.late += 1
        return True

    def seen(self, counter: int) -> bool:
        """Whether `accept` would refuse ``counter`` as old or repeated (nothing changes)."""
        top = self._top
        if counter > top:
            return False
        return top - counter >= WINDOW or bool(self._seen[counter & _SLOT_MASK])

    def _slide(self, top: int, counter: int) -> None:
        """Move the top from ``top`` to ``counter`` (>= top + 2) and mark ``counter``."""
        seen = self._seen
        if counter - top >= WINDOW:
            seen[:] = _ZEROS  # every remembered counter falls out of the window
        else:
            # Clear the slots of top+1 .. counter-1: they held counters WINDOW older.
            start = (top + 1) & _SLOT_MASK
            end = counter & _SLOT_MASK
            if start < end:
                seen[start:end] = _ZEROS[: end - start]
            else:  # the range wraps around the end of the ring
                seen[start:] = _ZEROS[: WINDOW - start]
                seen[:end] = _ZEROS[:end]
        seen[counter & _SLOT_MASK] = 1
