"""Schema revisions of the PoP store, with Alembic (pop/migrations/).

``upgrade`` takes a store to the newest revision in one transaction under the store's
write lock, so two PoPs upgrading at once queue rather than both migrate. A store made
before the migrations existed (its tables, ``meta.schema_version`` = 1, no
``alembic_version``) is stamped with revision 0001 first. ``revision_problem`` is what
``naas pop`` and the other commands ask before they touch a store: None when the store
is at the newest revision, else one line saying what to run (``naas db upgrade``). The
PoPs never upgrade a store by themselves: two machines running different versions of
NaaS must not take turns changing the schema under each other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).with_name("migrations")
LEGACY_REVISION = "0001"  # what a store without alembic_version but with our tables is at

# Alembic says "Running upgrade ..." at INFO for every step; `naas db upgrade` says it once.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of NaaS knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The store's revision; None for an empty database."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None and inspect(conn).has_table("members"):
        return LEGACY_REVISION
    return revision


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Bring the store on ``conn`` (inside the caller's write transaction) to the newest
    revision; returns (revision before, revision after)."""
    before = current_revision(conn)
    config = _config(conn)
    if before == LEGACY_REVISION and MigrationContext.configure(conn).get_current_revision() is None:
        command.stamp(config, LEGACY_REVISION)
    command.upgrade(config, "head")
    return before, head_revision()


def revision_problem(conn: Connection, upgrade_command: str) -> str | None:
    """None if the store is at the newest revision, else what is wrong, on one line."""
    revision = current_revision(conn)
    head = head_revision()
    if revision == head:
        return None
    if revision is None:
        return "the store has no NaaS tables: run `naas init` first"
    if revision not in known_revisions():
        return (
            f"the store's schema is at revision {revision}, newer than this NaaS knows ({head}): "
            "upgrade NaaS on this host"
        )
    return f"the store's schema is at revision {revision}, this NaaS needs {head}: run `{upgrade_command}`"
