"""Alembic's entry point, run by pop/migrate.py with a connection already open.

There is no alembic.ini: the store URL and the connection come from the caller
(``config.attributes["connection"]``), so migrations run inside the caller's
transaction and lock.
"""

from __future__ import annotations

from alembic import context

from naas.pop.schema import metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if hasattr(context, "config"):  # Alembic is running us (not an import that walks the package)
    run_migrations()
