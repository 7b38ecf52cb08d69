"""One revision per schema version; ids are the version numbers (``0007``, ``0008``…)."""

__all__ = ["r0007_baseline", "r0008_telemetry_keys"]
