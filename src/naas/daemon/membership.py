"""The agent's side of membership: the member cache, the network document on disk, and
certificate renewal (Agent inherits it; daemon/runner.py sets up the state below).

    member_enrolled(cert)      a PoP in this process issued or renewed a certificate
    document_received(body)    a PoP in this process found a newer document in its store
    check_in()                 at start: the newest document from a PoP, in the background
    start_renewals(renewer)    renew at 2/3 of the lifetime (daemon/renewal.py); a client
                               renews at its PoPs over pinned HTTPS (``_renew_at_pops``)

Files are written atomically (daemon/state.py): members.json when membership changed,
at most every CACHE_SAVE_INTERVAL and backing off while the disk refuses;
document.json (0600) whenever a newer document is taken; certificate.json when a
renewal comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from naas.core.node import NodeCore
from naas.daemon.backoff import Backoff
from naas.daemon.renewal import CertificateRenewal, Renewer, renewal_due
from naas.daemon.state import NodeDir
from naas.model.certificate import Certificate
from naas.pop.client import fetch_document, renew_certificate

log = logging.getLogger("naas.agent")


class AgentMembership:
    """Mixed into Agent."""

    # -- the Agent's state, declared here for the methods below (see Agent.__init__) --
    core: NodeCore | None
    node_dir: NodeDir
    renewal: CertificateRenewal | None
    _renewing: asyncio.Task[None] | None
    _checking_in: asyncio.Task[None] | None
    _loop: asyncio.AbstractEventLoop | None
    _members_dirty: bool
    _cache_saves: Backoff

    def _now(self) -> float:
        raise NotImplementedError

    def _transmit(self) -> bool:
        raise NotImplementedError

    def check_in(self) -> None:
        """Ask a PoP for the newest network document, in the background (an agent that
        was off may have missed one; if it revokes this member, the agent stops)."""
        assert self.core is not None and self._loop is not None
        core = self.core
        identity = core.identity

        async def ask() -> None:
            try:
                cert, key = identity.certificate, identity.signing_private
                body = await asyncio.to_thread(fetch_document, core.network, cert, key, now=time.time())
            except Exception as exc:  # the mesh brings the document anyway
                log.debug("no network document from the PoPs at start: %s", exc)
                return
            if body is not None and self.core is not None:
                self.document_received(body)

        self._checking_in = self._loop.create_task(ask())

    def _renew_at_pops(self, certificate: Certificate, signing_private: bytes) -> Certificate:
        """Renew at the first PoP that answers (pinned HTTPS; in a thread)."""
        assert self.core is not None
        return renew_certificate(self.core.network, certificate, signing_private, now=time.time())

    def start_renewals(self, renewer: Renewer) -> None:
        """Renew this member's certificate at two thirds of its life (daemon/renewal.py)."""
        assert self.core is not None and self._loop is not None
        core = self.core
        self.renewal = CertificateRenewal(
            lambda: core.identity.certificate, core.identity.signing_private, renewer, self._take_certificate
        )
        self._renewing = self._loop.create_task(self.renewal.run())

    def _take_certificate(self, certificate: Certificate) -> None:
        assert self.core is not None
        if self.core.certificate_renewed(certificate, self._now()):
            try:
                self.node_dir.save_certificate(certificate)
            except OSError as exc:
                log.warning("cannot save the renewed certificate: %s", exc)
            self._transmit()

    def _save_document(self) -> None:
        """Keep the newest document (0600, atomic): a restart starts from it, revocations
        included, even with every PoP down."""
        assert self.core is not None and self.core.document is not None
        try:
            self.node_dir.save_document(self.core.document.body)
        except OSError as exc:
            log.warning("cannot save the network document: %s", exc)

    def document_received(self, body: bytes) -> bool:
        """A PoP in the same process found a newer document in its store."""
        assert self.core is not None
        taken = self.core.document_received(body, self._now())
        self._transmit()
        return taken

    def _save_members(self, force: bool = False) -> None:
        """Rewrite members.json if membership changed (``force``: anyway, at exit). When it
        cannot be written (disk full, read-only, out of descriptors) the next try backs
        off up to a minute and the log says so at most once a minute (daemon/backoff.py):
        trying again at once would spin the agent and flood the log."""
        assert self.core is not None
        if not (self._members_dirty or force):
            return
        now = self._now()
        try:
            self.node_dir.save_members(self.core.member_records()[1:])
        except OSError as exc:
            report = self._cache_saves.failed(now)
            if report is not None:
                log.warning("cannot save member cache: %s (%s)", exc, report.describe())
            elif force:
                log.warning("cannot save member cache: %s (at exit)", exc)
            return
        self._members_dirty = False
        failures = self._cache_saves.succeeded(now)
        if failures:
            log.info("member cache saved again after %d failed tries", failures)

    def member_enrolled(self, certificate: Any) -> None:
        """Called by a PoP's enrollment service in the same process."""
        assert self.core is not None
        self.core.member_enrolled(certificate, self._now())
        self._members_dirty = True
        self._transmit()

    # -- control socket --------------------------------------------------------------------------

    def _certificate_status(self) -> dict[str, Any]:
        assert self.core is not None
        cert = self.core.identity.certificate
        renewal = self.renewal
        return {
            "not_after": cert.not_after,
            "renew_at": int(renewal_due(cert)),
            "renewals": renewal.renewals if renewal else 0,
            "renewal_failures": renewal.failures if renewal else 0,
            "last_error": renewal.last_error if renewal else None,
        }
