"""The PoPs' shared state in SQL: invitations, members and a few counters.

Every PoP process opens the same database (a SQLite file by default; PostgreSQL when
the PoPs run on different machines), so an invitation works once whichever PoP sees
it. The SQL is plain SQLAlchemy Core with portable types only.

Redemption is one transaction that takes the write lock first (SQLite: ``BEGIN
IMMEDIATE``, so two processes queue instead of failing on a lock upgrade; PostgreSQL:
the transaction-level advisory lock ``WRITE_LOCK_KEY``, taken first by every write
transaction: row locks alone leave the addresses and names read from ``members``
unlocked, and a schema upgrade has no rows to lock; the rows are also ``SELECT ... FOR
UPDATE``)::

    invitation exists? -> unused? -> not expired? -> node id (same name: same id,
    else the counter) -> issue(Grant) -> store member -> mark invitation used -> COMMIT

Anything raised on the way rolls everything back: the token stays usable. A used
invitation redeemed again with the same two public keys, within ``REPLAY_WINDOW`` of
its use, gets the stored certificate back unchanged (same node id, address and
signature) and nothing is written: the answer to the first redemption may have been
lost (a PoP killed between COMMIT and its answer, a dropped connection), and the
client's retry must not find its own invitation "already used". Other keys are
refused as before. On SQLite
the file is created mode 0600, WAL lets readers run beside the writer, and a busy
timeout makes a second PoP process wait for the lock rather than fail. On PostgreSQL
every pooled connection is pinged before use, so a restarted server costs no request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from naas.model.certificate import Certificate
from naas.model.codec import certificate_from_bytes_untrusted, certificate_to_bytes
from naas.model.config import NetworkConfig
from naas.model.ids import NodeId, is_valid_name, is_valid_node_id
from naas.pop import migrate
from naas.pop.addresses import choose_ip
from naas.pop.schema import invitations, members, meta
from naas.pop.store_control import ControlTables, Sign, allowed_json_of, publish_if_changed

FIRST_NODE_ID = 1
BUSY_TIMEOUT_MS = 30_000  # how long a PoP waits for the other PoP's write transaction
REPLAY_WINDOW = 3600  # s after its use in which a retry with the same keys gets its certificate
WRITE_LOCK_KEY = 0x6E616173  # PostgreSQL advisory lock of the write transactions ("naas")

REDEEM_MESSAGES = {
    "unknown": "invitation unknown",
    "used": "invitation already used",
    "expired": "invitation expired",
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RedeemError(Exception):
    """An invitation that cannot be redeemed; ``reason`` is unknown, used or expired."""

    def __init__(self, reason: str) -> None:
        if reason not in REDEEM_MESSAGES:
            raise ValueError(f"unknown redeem failure reason: {reason!r}")
        self.reason = reason
        super().__init__(REDEEM_MESSAGES[reason])


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``redeem`` hands the certificate issuer, read inside its transaction."""

    client_name: str
    node_id: NodeId
    previous: Certificate | None  # the member's certificate if it enrolls again
    used_ips: frozenset[IPv4Address]  # addresses held by the other members


@dataclass(frozen=True, slots=True)
class InvitationRecord:
    token_hash: str
    client_name: str
    created_at: int
    expires_at: int
    used_at: int | None
    used_by_pop: str | None
    node_id: int | None


def sqlite_url(path: str | Path) -> str:
    """The store URL of a SQLite file (absolute path: ``sqlite:////abs/pop.db``)."""
    return f"sqlite:///{Path(path).resolve()}"


class PopStore(ControlTables):
    """The SQL store; safe to share between threads and between processes. The control
    plane's tables (clients, revocations, documents, tokens) are in pop/store_control.py."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        options: dict[str, Any] = {}
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgresql = parsed.get_backend_name() == "postgresql"
        if self.is_postgresql:
            options["pool_pre_ping"] = True  # a restarted server left dead connections behind
        if self.is_sqlite:
            database = parsed.database
            in_memory = not database or database == ":memory:"
            if in_memory:
                options["poolclass"] = StaticPool  # one shared connection, or no shared data
            else:
                _create_private_file(Path(str(database)))
            options["connect_args"] = {
                "check_same_thread": False,
                "timeout": BUSY_TIMEOUT_MS / 1000,
            }
        self.engine: Engine = create_engine(parsed, **options)
        if self.is_sqlite:
            _tune_sqlite(self.engine, wal=not in_memory)
        # Same pool; transactions begun through it take the write lock up front.
        self._writer: Engine = self.engine.execution_options(naas_write=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> PopStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            if self.is_postgresql:  # SQLite: BEGIN IMMEDIATE (_tune_sqlite)
                conn.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- schema ---------------------------------------------------------------------------

    def create_schema(self) -> tuple[str | None, str]:
        """Create or upgrade the tables to the newest revision (idempotent, pop/migrate.py);
        returns the (revision before, revision after)."""
        with self._write() as conn:
            revisions = migrate.upgrade(conn)
            if _get_meta(conn, "next_node_id") is None:
                _set_meta(conn, "next_node_id", str(FIRST_NODE_ID))
        return revisions

    def revision_problem(self, upgrade_command: str) -> str | None:
        """None if the store is at the newest revision, else one line (pop/migrate.py)."""
        with self._read() as conn:
            return migrate.revision_problem(conn, upgrade_command)

    # -- invitations ------------------------------------------------------------------------

    def add_invitation(self, token_hash: str, client_name: str, now: float, expires_at: float) -> None:
        """Store a new invitation; it replaces the client's unused ones."""
        if not _HEX64.match(token_hash):
            raise ValueError("token_hash must be 64 lowercase hex digits")
        if not is_valid_name(client_name):
            raise ValueError(f"not a member name: {client_name!r}")
        if expires_at <= now:
            raise ValueError("an invitation must expire after it is created")
        with self._write() as conn:
            is_pop = conn.execute(
                select(members.c.is_pop).where(members.c.name == client_name)
            ).scalar_one_or_none()
            if is_pop:
                raise ValueError(f"{client_name!r} is a PoP, not a client")
            conn.execute(
                delete(invitations).where(
                    invitations.c.client_name == client_name, invitations.c.used_at.is_(None)
                )
            )
            conn.execute(
                insert(invitations).values(
                    token_hash=token_hash,
                    client_name=client_name,
                    created_at=int(now),
                    expires_at=int(expires_at),
                )
            )

    def invitations(self) -> list[InvitationRecord]:
        with self._read() as conn:
            rows = conn.execute(select(invitations).order_by(invitations.c.created_at)).all()
        return [InvitationRecord(**row._asdict()) for row in rows]

    def redeem(
        self,
        token_hash: str,
        now: float,
        pop_name: str,
        issue: Callable[[Grant], Certificate],
        *,
        keys: tuple[bytes, bytes] | None = None,
        sign: Sign | None = None,
    ) -> Certificate:
        """Atomically use an invitation and enroll its client; see the module docstring.

        ``keys`` are the (static, signing) public keys the client asks a certificate
        for: with them, a used invitation whose member still holds exactly these keys
        returns that member's stored certificate (``issue`` is not called). ``sign``:
        a client with allowed addresses gets a new document naming its node id (the
        certificate does not carry them); without it, none is made.
        Raises RedeemError("unknown" | "used" | "expired"); anything ``issue`` raises
        propagates, and in every failure case nothing is changed.
        """
        with self._write() as conn:
            invitation = conn.execute(
                select(invitations).where(invitations.c.token_hash == token_hash).with_for_update()
            ).one_or_none()
            if invitation is None:
                raise RedeemError("unknown")
            if invitation.used_at is not None:
                again = _redeemed_with(conn, invitation, keys, now)
                if again is None:
                    raise RedeemError("used")
                return again
            if now >= invitation.expires_at:
                raise RedeemError("expired")
            name = invitation.client_name
            existing = conn.execute(
                select(members.c.node_id, members.c.certificate_json).where(members.c.name == name)
            ).one_or_none()
            if existing is not None:
                node_id = NodeId(existing.node_id)
                previous: Certificate | None = _load_cert(existing.certificate_json)
            else:
                node_id, previous = _next_node_id(conn), None
            others = conn.execute(select(members.c.certificate_json).where(members.c.name != name)).scalars()
            used_ips = frozenset(cert.ip.ip for text in others if (cert := _load_cert(text)).ip is not None)
            cert = issue(Grant(name, node_id, previous, used_ips))
            if cert.node_id != node_id or cert.name != name:
                raise ValueError("issued certificate does not match the grant")
            row = _member_row(cert, now, pop_name)
            if existing is not None:
                conn.execute(update(members).where(members.c.node_id == node_id).values(**row))
            else:
                conn.execute(insert(members).values(**row))
            marked = conn.execute(
                update(invitations)
                .where(invitations.c.token_hash == token_hash, invitations.c.used_at.is_(None))
                .values(used_at=int(now), used_by_pop=pop_name, node_id=node_id)
            )
            if marked.rowcount != 1:  # cannot happen under the lock; never hand out twice
                raise RedeemError("used")
            if sign is not None and allowed_json_of(conn, name) != "[]":
                publish_if_changed(conn, now, sign)
            return cert

    # -- members ----------------------------------------------------------------------------

    def allocate_node_id(self) -> NodeId:
        """A fresh node id (e.g. for a PoP at ``naas init``); never handed out again."""
        with self._write() as conn:
            return _next_node_id(conn)

    def add_member(self, cert: Certificate, via: str, *, now: float | None = None) -> None:
        """Store a member directly (PoPs at init); replaces the member with its node id."""
        enrolled_at = cert.not_before if now is None else now
        with self._write() as conn:
            clash = conn.execute(
                select(members.c.node_id).where(
                    members.c.name == cert.name, members.c.node_id != cert.node_id
                )
            ).scalar_one_or_none()
            if clash is not None:
                raise ValueError(f"{cert.name!r} is already member {clash}")
            row = _member_row(cert, enrolled_at, via)
            done = conn.execute(update(members).where(members.c.node_id == cert.node_id).values(**row))
            if done.rowcount == 0:
                conn.execute(insert(members).values(**row))
            counter = int(_get_meta(conn, "next_node_id", for_update=True) or FIRST_NODE_ID)
            if cert.node_id >= counter:
                _set_meta(conn, "next_node_id", str(cert.node_id + 1))

    def members(self) -> list[Certificate]:
        with self._read() as conn:
            texts = conn.execute(select(members.c.certificate_json).order_by(members.c.node_id)).scalars()
            return [_load_cert(text) for text in texts]

    def member(self, name: str) -> Certificate | None:
        with self._read() as conn:
            text = conn.execute(
                select(members.c.certificate_json).where(members.c.name == name)
            ).scalar_one_or_none()
        return None if text is None else _load_cert(text)

    def used_ips(self) -> set[IPv4Address]:
        return {cert.ip.ip for cert in self.members() if cert.ip is not None}

    def allocate_ip(self, config: NetworkConfig, client_name: str) -> IPv4Interface | None:
        """The address ``client_name`` would get now (see addresses.choose_ip).

        Outside a redemption this is advisory: ``redeem`` decides inside its transaction.
        """
        certs = self.members()
        current = next((c for c in certs if c.name == client_name), None)
        used = {c.ip.ip for c in certs if c.ip is not None and c.name != client_name}
        previous_ip = current.ip.ip if current is not None and current.ip is not None else None
        return choose_ip(config, client_name, used, previous_ip)


# -- helpers --------------------------------------------------------------------------------


def _create_private_file(path: Path) -> None:
    """Create the SQLite file mode 0600 before SQLite does (its -wal/-shm follow suit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


def _tune_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below); the driver's own implicit BEGIN is off.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("naas_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _get_meta(conn: Connection, key: str, *, for_update: bool = False) -> str | None:
    query = select(meta.c.value).where(meta.c.key == key)
    if for_update:
        query = query.with_for_update()
    value: str | None = conn.execute(query).scalar_one_or_none()
    return value


def _set_meta(conn: Connection, key: str, value: str) -> None:
    if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(insert(meta).values(key=key, value=value))


def _next_node_id(conn: Connection) -> NodeId:
    counter = int(_get_meta(conn, "next_node_id", for_update=True) or FIRST_NODE_ID)
    highest = conn.execute(select(func.max(members.c.node_id))).scalar_one_or_none() or 0
    candidate = max(counter, highest + 1)
    if not is_valid_node_id(candidate):
        raise RuntimeError("node ids exhausted")
    _set_meta(conn, "next_node_id", str(candidate + 1))
    return NodeId(candidate)


def _redeemed_with(
    conn: Connection, invitation: Any, keys: tuple[bytes, bytes] | None, now: float
) -> Certificate | None:
    """The certificate a used ``invitation`` gave ``keys``, if a retry may have it again."""
    if keys is None or invitation.node_id is None or now - invitation.used_at > REPLAY_WINDOW:
        return None
    text = conn.execute(
        select(members.c.certificate_json).where(
            members.c.node_id == invitation.node_id, members.c.name == invitation.client_name
        )
    ).scalar_one_or_none()
    if text is None:
        return None
    cert = _load_cert(text)
    return cert if (cert.static_public, cert.signing_public) == keys else None


def _member_row(cert: Certificate, now: float, via: str) -> dict[str, Any]:
    return {
        "node_id": cert.node_id,
        "name": cert.name,
        "is_pop": cert.is_pop,
        "certificate_json": certificate_to_bytes(cert).decode("utf-8"),
        "enrolled_at": int(now),
        "enrolled_via": via,
    }


def _load_cert(text: str) -> Certificate:
    return certificate_from_bytes_untrusted(text.encode("utf-8"))
