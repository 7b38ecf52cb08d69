"""Phased, health-gated rollouts of signed artifacts.

:mod:`.engine` is the I/O-free state machine (with :mod:`.shadow`, :mod:`.verbs`,
:mod:`.model`, :mod:`.plan` and :mod:`.gates`); :mod:`.driver` is its edge (clock,
store, desired state, device reports), :mod:`.metrics` fetches the gate figures,
:mod:`.persist` saves and restores engines.
"""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "artifacts",
    "champion",
    "driver",
    "engine",
    "gates",
    "metrics",
    "model",
    "persist",
    "plan",
    "shadow",
    "verbs",
    "view",
]
