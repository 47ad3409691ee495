"""Alembic migrations of the PoP store (see pop/migrate.py)."""
