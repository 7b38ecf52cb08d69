"""The fleet server (`fleet-server`) and the operator CLI (`fleetctl`).

Its public surface is the modules and subpackages in ``__all__``; the server
imports :mod:`edgefleet_contract` and :mod:`edgefleet_common`, never the agent
(except the device's own inference runtime, to check packages: see
``tests/test_layers.py``).
"""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "api",
    "auth",
    "broker",
    "cbpe",
    "cli",
    "cohorts",
    "config",
    "console",
    "enrollment",
    "factory_models",
    "federation",
    "fleetctl",
    "ingest",
    "link",
    "local_accounts",
    "metrics",
    "modelkit",
    "pki",
    "preflight",
    "quota",
    "ratelimit",
    "reconcile",
    "registry",
    "rollouts",
    "selector",
    "server",
    "store",
    "tuf",
    "twin",
    "versions",
]
