"""Certificate renewal: a member asks for a new certificate at two thirds of its lifetime.

Theory of operation. ``CertificateRenewal`` runs beside the agent as one asyncio task:

    sleep until not_before + RENEW_AT x (not_after - not_before)  (re-checked at least
    every CHECK_INTERVAL: clocks jump, and `naas renew` may have renewed meanwhile)
    -> renewer(certificate, signing key) in a thread: a client asks its PoPs over
       pinned HTTPS (pop/client.py renew_certificate), authenticated by the certificate
       and a signature of its own key, no token; a PoP renews itself from its store
    -> the agent: core.certificate_renewed (the mesh hears of it, hash first; sessions
       stay), certificate.json rewritten (0600 directory, atomic)
    a failure: one log line, tried again after RETRY_FIRST, doubling to RETRY_MAX

``renew_now`` is the same step on demand (``naas renew``, through the control socket).
A member whose certificate expired while it was off never gets here: the agent refuses
to start and says to ask for a new invitation (daemon/runner.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from naas.model.certificate import Certificate

RENEW_AT = 2 / 3  # of the lifetime
CHECK_INTERVAL = 60.0  # s: the longest sleep before the due time is looked at again
RETRY_FIRST = 15.0  # s after a failed renewal
RETRY_MAX = 600.0

Renewer = Callable[[Certificate, bytes], Certificate]  # blocking: runs in a thread

log = logging.getLogger("naas.agent")


def renewal_due(certificate: Certificate) -> float:
    """When ``certificate`` should be renewed (Unix seconds)."""
    return certificate.not_before + RENEW_AT * (certificate.not_after - certificate.not_before)


class CertificateRenewal:
    def __init__(
        self,
        current: Callable[[], Certificate],
        signing_private: bytes,
        renewer: Renewer,
        renewed: Callable[[Certificate], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``current()``: the certificate in use; ``renewed(cert)``: the agent takes it."""
        self._current = current
        self._signing_private = signing_private
        self._renewer = renewer
        self._renewed = renewed
        self._clock = clock
        self._lock = asyncio.Lock()
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None

    async def run(self) -> None:
        retry = RETRY_FIRST
        while True:
            wait = renewal_due(self._current()) - self._clock()
            if wait > 0:
                await asyncio.sleep(min(wait, CHECK_INTERVAL))
                continue
            try:
                await self.renew_now()
                retry = RETRY_FIRST
            except Exception as exc:  # one line; the next try comes later
                log.warning("certificate renewal failed: %s; next try in %.0f s", exc, retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)

    async def renew_now(self) -> Certificate:
        """Renew at once; raises what the renewer raises (its message is for the user)."""
        async with self._lock:
            old = self._current()
            try:
                new = await asyncio.to_thread(self._renewer, old, self._signing_private)
            except Exception as exc:
                self.failures += 1
                self.last_error = str(exc)
                raise
            self._renewed(new)
            self.renewals += 1
            self.last_error = None
            log.info("certificate renewed: valid until %d (was %d)", new.not_after, old.not_after)
            return new
