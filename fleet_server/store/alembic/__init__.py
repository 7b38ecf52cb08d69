"""Alembic's environment for the store (run through ``store.migrations``, not a CLI)."""

__all__: list[str] = []  # nothing to import: Alembic loads env.py and versions/ itself
