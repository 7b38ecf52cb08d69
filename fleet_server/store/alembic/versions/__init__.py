"""One revision per schema version; ids are the version numbers (``0007``, ``0008``…)."""
