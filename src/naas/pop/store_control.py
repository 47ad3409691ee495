"""The control plane's part of the PoP store: clients, revocations, the policy, network
documents and API tokens (PopStore inherits it; the tables are in pop/schema.py).

Every change to what the network should be goes with its new network document in one
write transaction::

    lock (SQLite BEGIN IMMEDIATE / PostgreSQL advisory lock, as every write)
    -> change the rows (a client's groups or addresses, a member moved to revocations,
       the policy, ...)
    -> read the state a document describes (DocumentState) -> version = newest + 1
    -> sign(version, state) -> insert the document -> COMMIT

so no PoP can ever see a revocation without the document that announces it, and two
changes made at two PoPs at once get two versions, one after the other. A change that
may leave the document as it was (the same groups again, a policy rewritten to the same
rules) compares the sections the new state would have with the newest document's and
makes no version when they are equal (``_publish_if_changed``). ``apply_changes`` makes
one document for many changes (``naas apply``). ``sign`` is given by the caller
(control/, which holds the CA key); this module never signs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from naas.model.certificate import Certificate
from naas.model.codec import canonical_json, certificate_from_bytes_untrusted, certificate_to_bytes
from naas.model.document import KNOWN_SECTIONS, MAX_ALLOWED_ADDRESSES, Revocation, sections_of
from naas.model.ids import is_valid_name
from naas.model.policy import OPEN_POLICY, Policy, parse_policy
from naas.pop.schema import api_tokens, clients, documents, invitations, members, revocations
from naas.pop.schema import policy as policy_table

ROLES = ("admin", "read")
POP_GROUPS = ("pop",)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    name: str
    ip: IPv4Address | None
    groups: tuple[str, ...]
    created_at: int
    allowed_addresses: tuple[IPv4Network, ...] = ()  # sorted


@dataclass(frozen=True, slots=True)
class ClientWrite:
    """A client as a change wants it (``put_client``, ``apply_changes``)."""

    name: str
    ip: IPv4Address | None
    groups: tuple[str, ...]
    allowed_addresses: tuple[IPv4Network, ...] | None = None  # None: as they are (new: none)


@dataclass(frozen=True, slots=True)
class DocumentState:
    """What the next document says: members' groups where they differ from their
    certificates, the revocations whose certificates have not expired, the policy, and
    the networks enrolled members may send from besides their own address."""

    groups: dict[int, tuple[str, ...]]
    revoked: tuple[Revocation, ...]
    policy: Policy = OPEN_POLICY
    allowed: dict[int, tuple[str, ...]] = field(default_factory=dict)  # node id -> CIDRs

    def sections(self) -> dict[str, Any]:
        """The document sections this state makes (model/document.py)."""
        return sections_of(self.groups, self.revoked, policy=self.policy, allowed_addresses=self.allowed)


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
        *,
        allowed_addresses: tuple[IPv4Network, ...] | None = None,
    ) -> bool:
        """Create or change a client; a new document if what its member's entry in the
        document says changes (groups, allowed addresses). ``allowed_addresses`` None:
        left as they are. Returns False when nothing changed."""
        with self._write() as conn:
            changed, affects_document = _put_client(
                conn, ClientWrite(name, ip, groups, allowed_addresses), now
            )
            if affects_document:
                _publish_if_changed(conn, now, sign)
            return changed

    def delete_client(self, name: str, now: float, sign: Sign) -> Certificate | None:
        """Remove a client, its unused invitations and, if it enrolled, its member (revoked,
        with a new document); returns the revoked certificate."""
        with self._write() as conn:
            if not _has_client(conn, name):
                raise KeyError(name)
            cert = _delete_client(conn, name, now)
            if cert is not None:
                _publish(conn, now, sign)
            return cert

    def apply_changes(
        self,
        writes: Sequence[ClientWrite],
        removed: Sequence[str],
        policy: Policy | None,
        now: float,
        sign: Sign,
    ) -> int | None:
        """Many changes in one transaction with at most one new document (``naas apply``):
        clients created or changed, clients removed (their members revoked; a client
        already gone is skipped), the policy (None: unchanged). Returns the new
        document's version, None if the document would say what it says."""
        with self._write() as conn:
            touched = False
            for write in writes:
                touched |= _put_client(conn, write, now)[1]
            for name in removed:
                if _has_client(conn, name):  # else removed meanwhile, its member with it
                    touched |= _delete_client(conn, name, now) is not None
            if policy is not None:
                touched |= _set_policy(conn, policy, now)
            return _publish_if_changed(conn, now, sign) if touched else None

    # -- the policy -------------------------------------------------------------------------------

    def policy(self) -> Policy:
        """The network's policy (the open policy until one is set)."""
        with self._read() as conn:
            return _policy(conn)

    def set_policy(self, policy: Policy, now: float, sign: Sign) -> int | None:
        """Make ``policy`` the network's; returns the new document's version, None when the
        policy was already this one."""
        with self._write() as conn:
            if not _set_policy(conn, policy, now):
                return None
            return _publish_if_changed(conn, now, sign)

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
        allowed_addresses=tuple(IPv4Network(text) for text in json.loads(row.allowed_json)),
    )


def _put_client(conn: Connection, write: ClientWrite, now: float) -> tuple[bool, bool]:
    """(the row changed, what the document says of its member may have changed)."""
    name, groups, allowed = write.name, write.groups, write.allowed_addresses
    if not is_valid_name(name) or not all(is_valid_name(g) for g in groups):
        raise ValueError(f"not a client name or group names: {name!r} {groups!r}")
    values = {
        "ip": None if write.ip is None else str(write.ip),
        "groups_json": json.dumps(sorted(set(groups))),
    }
    if allowed is not None:
        if len(allowed) > MAX_ALLOWED_ADDRESSES or not all(isinstance(n, IPv4Network) for n in allowed):
            raise ValueError(f"{name}: allowed addresses: at most {MAX_ALLOWED_ADDRESSES} IPv4 networks")
        values["allowed_json"] = json.dumps([str(n) for n in sorted(set(allowed))])
    if conn.execute(select(members.c.is_pop).where(members.c.name == name)).scalar_one_or_none():
        raise ValueError(f"{name!r} is a PoP, not a client")
    row = conn.execute(select(clients).where(clients.c.name == name)).one_or_none()
    if row is None:
        conn.execute(insert(clients).values(name=name, created_at=int(now), **values))
        return True, True  # it may have enrolled before the clients table existed
    before = row._asdict()
    if all(before[key] == value for key, value in values.items()):
        return False, False
    conn.execute(update(clients).where(clients.c.name == name).values(**values))
    return True, any(before[key] != values.get(key, before[key]) for key in ("groups_json", "allowed_json"))


def _has_client(conn: Connection, name: str) -> bool:
    return conn.execute(select(clients.c.name).where(clients.c.name == name)).one_or_none() is not None


def _delete_client(conn: Connection, name: str, now: float) -> Certificate | None:
    """The client, its unused invitations and its member go; the revoked certificate."""
    conn.execute(delete(clients).where(clients.c.name == name))
    conn.execute(
        delete(invitations).where(invitations.c.client_name == name, invitations.c.used_at.is_(None))
    )
    return _revoke(conn, name, now)


def _policy(conn: Connection) -> Policy:
    text = conn.execute(select(policy_table.c.policy_json).where(policy_table.c.id == 1)).scalar_one_or_none()
    return OPEN_POLICY if text is None else parse_policy(json.loads(text), "store.policy")


def _set_policy(conn: Connection, policy: Policy, now: float) -> bool:
    """Store ``policy`` (the open policy: no row); False when it already was the policy."""
    if _policy(conn) == policy:
        return False
    conn.execute(delete(policy_table))
    if not policy.is_open:
        text = canonical_json(policy.as_json()).decode()
        conn.execute(insert(policy_table).values(id=1, policy_json=text, updated_at=int(now)))
    return True


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
    wanted: dict[str, tuple[str, ...]] = {}
    allowed_by_name: dict[str, tuple[str, ...]] = {}
    for row in conn.execute(select(clients.c.name, clients.c.groups_json, clients.c.allowed_json)):
        wanted[row.name] = tuple(json.loads(row.groups_json))
        if row.allowed_json != "[]":
            allowed_by_name[row.name] = tuple(json.loads(row.allowed_json))
    groups: dict[int, tuple[str, ...]] = {}
    allowed: dict[int, tuple[str, ...]] = {}
    for row in conn.execute(select(members.c.node_id, members.c.name, members.c.certificate_json)):
        cert = certificate_from_bytes_untrusted(row.certificate_json.encode())
        current = POP_GROUPS if cert.is_pop else wanted.get(row.name, cert.groups)
        if tuple(sorted(set(current))) != tuple(sorted(set(cert.groups))):
            groups[row.node_id] = tuple(sorted(set(current)))
        if not cert.is_pop and row.name in allowed_by_name:
            allowed[row.node_id] = allowed_by_name[row.name]
    revoked = tuple(
        Revocation(row.node_id, row.name, row.not_after)
        for row in conn.execute(select(revocations).where(revocations.c.not_after > int(now)))
    )
    return DocumentState(groups, revoked, _policy(conn), allowed)


def _publish(conn: Connection, now: float, sign: Sign, state: DocumentState | None = None) -> int:
    version = int(conn.execute(select(func.max(documents.c.version))).scalar_one_or_none() or 0) + 1
    body = sign(version, _state(conn, now) if state is None else state)
    conn.execute(insert(documents).values(version=version, body=body.decode(), created_at=int(now)))
    return version


def _publish_if_changed(conn: Connection, now: float, sign: Sign) -> int | None:
    """A new document only if the sections its state makes differ from the newest
    document's (every section this version knows: groups, revoked, policy, addresses);
    its version, or None."""
    state = _state(conn, now)
    row = conn.execute(select(documents.c.body).order_by(documents.c.version.desc()).limit(1)).one_or_none()
    if row is not None:
        latest = json.loads(row.body)["sections"]
        known = {key: value for key, value in latest.items() if key in KNOWN_SECTIONS}
        if canonical_json(known) == canonical_json(state.sections()):
            return None
    return _publish(conn, now, sign, state)


def publish_if_changed(conn: Connection, now: float, sign: Sign) -> int | None:
    """``_publish_if_changed`` for pop/store.py's redemption (a member enrolled with
    addresses of its own: the document lists them under its new node id)."""
    return _publish_if_changed(conn, now, sign)


def allowed_json_of(conn: Connection, name: str) -> str:
    """A client's allowed_json ("[]" for none, or no such client)."""
    text = conn.execute(select(clients.c.allowed_json).where(clients.c.name == name)).scalar_one_or_none()
    return "[]" if text is None else str(text)
