"""Alembic's environment for the store (run through ``store.migrations``, not a CLI)."""
