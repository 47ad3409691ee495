"""The control plane's part of the PoP store: clients, revocations, network documents and
API tokens (PopStore inherits it; the tables are in pop/schema.py).

Every change to what the network should be goes with its new network document in one
write transaction::

    lock (SQLite BEGIN IMMEDIATE / PostgreSQL advisory lock, as every write)
    -> change the rows (a client's groups, a member moved to revocations, ...)
    -> read the state a document describes (DocumentState) -> version = newest + 1
    -> sign(version, state) -> insert the document -> COMMIT

so no PoP can ever see a revocation without the document that announces it, and two
changes made at two PoPs at once get two versions, one after the other. ``sign`` is
given by the caller (control/, which holds the CA key); this module never signs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from naas.model.certificate import Certificate
from naas.model.codec import certificate_from_bytes_untrusted, certificate_to_bytes
from naas.model.config import is_valid_name
from naas.model.document import Revocation
from naas.pop.schema import api_tokens, clients, documents, invitations, members, revocations

ROLES = ("admin", "read")
POP_GROUPS = ("pop",)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    name: str
    ip: IPv4Address | None
    groups: tuple[str, ...]
    created_at: int


@dataclass(frozen=True, slots=True)
class DocumentState:
    """What the next document says: members' groups where they differ from their
    certificates, and the revocations whose certificates have not expired."""

    groups: dict[int, tuple[str, ...]]
    revoked: tuple[Revocation, ...]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    name: str
    role: str
    created_at: int
    last_used_at: int | None


Sign = Callable[[int, DocumentState], bytes]  # (version, state) -> the signed body


class ControlTables:
    """Mixed into PopStore, which provides the two transactions."""

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    # -- clients --------------------------------------------------------------------------------

    def clients(self) -> list[ClientRecord]:
        with self._read() as conn:
            return [_client(row) for row in conn.execute(select(clients).order_by(clients.c.name))]

    def client(self, name: str) -> ClientRecord | None:
        with self._read() as conn:
            row = conn.execute(select(clients).where(clients.c.name == name)).one_or_none()
        return None if row is None else _client(row)

    def put_client(
        self,
        name: str,
        ip: IPv4Address | None,
        groups: tuple[str, ...],
        now: float,
        sign: Sign,
    ) -> bool:
        """Create or change a client; a new document if its member's groups change.
        Returns False when nothing changed."""
        if not is_valid_name(name) or not all(is_valid_name(g) for g in groups):
            raise ValueError(f"not a client name or group names: {name!r} {groups!r}")
        values = {"ip": None if ip is None else str(ip), "groups_json": json.dumps(sorted(set(groups)))}
        with self._write() as conn:
            if conn.execute(select(members.c.is_pop).where(members.c.name == name)).scalar_one_or_none():
                raise ValueError(f"{name!r} is a PoP, not a client")
            row = conn.execute(select(clients).where(clients.c.name == name)).one_or_none()
            if row is not None and (row.ip, row.groups_json) == (values["ip"], values["groups_json"]):
                return False
            if row is None:
                conn.execute(insert(clients).values(name=name, created_at=int(now), **values))
            else:
                conn.execute(update(clients).where(clients.c.name == name).values(**values))
            if row is None or row.groups_json != values["groups_json"]:
                _publish_if_changed(conn, now, sign)
            return True

    def delete_client(self, name: str, now: float, sign: Sign) -> Certificate | None:
        """Remove a client, its unused invitations and, if it enrolled, its member (revoked,
        with a new document); returns the revoked certificate."""
        with self._write() as conn:
            if conn.execute(delete(clients).where(clients.c.name == name)).rowcount == 0:
                raise KeyError(name)
            conn.execute(
                delete(invitations).where(invitations.c.client_name == name, invitations.c.used_at.is_(None))
            )
            cert = _revoke(conn, name, now)
            if cert is not None:
                _publish(conn, now, sign)
            return cert

    def delete_invitation(self, token_hash: str) -> bool:
        """Cancel an unused invitation; False if there is none with this hash."""
        with self._write() as conn:
            unused = invitations.c.token_hash == token_hash, invitations.c.used_at.is_(None)
            done = conn.execute(delete(invitations).where(*unused))
            return bool(done.rowcount)

    # -- members ----------------------------------------------------------------------------------

    def revoke(self, name: str, now: float, sign: Sign) -> Certificate:
        """Cut member ``name`` off: its row moves to revocations, its client's unused
        invitations go, and a new document lists it. KeyError: no such member."""
        with self._write() as conn:
            conn.execute(
                delete(invitations).where(invitations.c.client_name == name, invitations.c.used_at.is_(None))
            )
            cert = _revoke(conn, name, now)
            if cert is None:
                raise KeyError(name)
            _publish(conn, now, sign)
            return cert

    def revocations(self) -> list[Revocation]:
        with self._read() as conn:
            rows = conn.execute(select(revocations).order_by(revocations.c.node_id))
            return [Revocation(row.node_id, row.name, row.not_after) for row in rows]

    def replace_certificate(self, old: Certificate, new: Certificate) -> bool:
        """A renewal: ``new`` replaces ``old`` if ``old`` is still the member's certificate
        (not revoked, not renewed meanwhile); False otherwise."""
        with self._write() as conn:
            row = conn.execute(
                select(members.c.certificate_json).where(members.c.node_id == old.node_id)
            ).one_or_none()
            if row is None or certificate_from_bytes_untrusted(row.certificate_json.encode()) != old:
                return False
            conn.execute(
                update(members)
                .where(members.c.node_id == old.node_id)
                .values(certificate_json=certificate_to_bytes(new).decode())
            )
            return True

    # -- documents --------------------------------------------------------------------------------

    def document_version(self) -> int:
        """The newest document's version; 0 before the first."""
        with self._read() as conn:
            return int(conn.execute(select(func.max(documents.c.version))).scalar_one_or_none() or 0)

    def latest_document(self) -> tuple[int, bytes] | None:
        with self._read() as conn:
            row = conn.execute(
                select(documents.c.version, documents.c.body).order_by(documents.c.version.desc()).limit(1)
            ).one_or_none()
        return None if row is None else (int(row.version), row.body.encode())

    def publish(self, now: float, sign: Sign) -> int:
        """A new document of the current state, whatever changed (``naas init``, after an
        upgrade); returns its version."""
        with self._write() as conn:
            return _publish(conn, now, sign)

    # -- API tokens -------------------------------------------------------------------------------

    def add_token(self, token_hash: str, name: str, role: str, now: float) -> None:
        if role not in ROLES or not is_valid_name(name):
            raise ValueError(f"bad token name or role: {name!r} {role!r}")
        with self._write() as conn:
            conn.execute(
                insert(api_tokens).values(token_hash=token_hash, name=name, role=role, created_at=int(now))
            )

    def token_role(self, token_hash: str, now: float) -> str | None:
        """The role of the token with this hash (and it was used now); None if unknown."""
        mine = api_tokens.c.token_hash == token_hash
        with self._read() as conn:
            row = conn.execute(select(api_tokens.c.role, api_tokens.c.last_used_at).where(mine)).one_or_none()
        if row is None:
            return None
        if row.last_used_at is None or now - row.last_used_at >= 60:  # at most a write a minute
            with self._write() as conn:
                conn.execute(update(api_tokens).where(mine).values(last_used_at=int(now)))
        return str(row.role)

    def tokens(self) -> list[TokenRecord]:
        with self._read() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at))
            return [TokenRecord(r.name, r.role, r.created_at, r.last_used_at) for r in rows]

    def delete_tokens(self, name: str) -> int:
        with self._write() as conn:
            return int(conn.execute(delete(api_tokens).where(api_tokens.c.name == name)).rowcount)


# -- inside a transaction ---------------------------------------------------------------------


def _client(row: Any) -> ClientRecord:
    return ClientRecord(
        name=row.name,
        ip=None if row.ip is None else IPv4Address(row.ip),
        groups=tuple(json.loads(row.groups_json)),
        created_at=row.created_at,
    )


def _revoke(conn: Connection, name: str, now: float) -> Certificate | None:
    row = conn.execute(select(members).where(members.c.name == name)).one_or_none()
    if row is None:
        return None
    if row.is_pop:
        raise ValueError(f"{name!r} is a PoP: a PoP is retired by removing it from naas.toml")
    cert = certificate_from_bytes_untrusted(row.certificate_json.encode())
    conn.execute(delete(members).where(members.c.node_id == row.node_id))
    conn.execute(
        insert(revocations).values(
            node_id=row.node_id,
            name=name,
            revoked_at=int(now),
            not_after=cert.not_after,
            certificate_json=row.certificate_json,
        )
    )
    return cert


def _state(conn: Connection, now: float) -> DocumentState:
    wanted = {row.name: tuple(json.loads(row.groups_json)) for row in conn.execute(select(clients))}
    groups: dict[int, tuple[str, ...]] = {}
    for row in conn.execute(select(members.c.node_id, members.c.name, members.c.certificate_json)):
        cert = certificate_from_bytes_untrusted(row.certificate_json.encode())
        current = POP_GROUPS if cert.is_pop else wanted.get(row.name, cert.groups)
        if tuple(sorted(set(current))) != tuple(sorted(set(cert.groups))):
            groups[row.node_id] = tuple(sorted(set(current)))
    revoked = tuple(
        Revocation(row.node_id, row.name, row.not_after)
        for row in conn.execute(select(revocations).where(revocations.c.not_after > int(now)))
    )
    return DocumentState(groups, revoked)


def _publish(conn: Connection, now: float, sign: Sign) -> int:
    version = int(conn.execute(select(func.max(documents.c.version))).scalar_one_or_none() or 0) + 1
    body = sign(version, _state(conn, now))
    conn.execute(insert(documents).values(version=version, body=body.decode(), created_at=int(now)))
    return version


def _publish_if_changed(conn: Connection, now: float, sign: Sign) -> None:
    """A new document only if the state it describes differs from the newest one's."""
    row = conn.execute(select(documents.c.body).order_by(documents.c.version.desc()).limit(1)).one_or_none()
    if row is not None:
        latest = json.loads(row.body)["sections"]
        state = _state(conn, now)
        if latest.get("groups") == {str(n): list(g) for n, g in sorted(state.groups.items())} and {
            entry["node"] for entry in latest.get("revoked", [])
        } == {r.node_id for r in state.revoked}:
            return
    _publish(conn, now, sign)
