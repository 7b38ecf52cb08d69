"""One revision per schema version; ids are the version numbers (``0007``, ``0008``…)."""

__all__: list[str] = []  # Alembic finds the revisions by path, never by import
