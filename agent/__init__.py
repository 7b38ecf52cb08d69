"""The edge agent: the daemon (`edge-agent`) and what it is made of.

Its public surface is the modules in ``__all__``; the agent imports
:mod:`edgefleet_contract` and :mod:`edgefleet_common`, never the server.
"""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "allocator",
    "certinfo",
    "cli",
    "commands",
    "config",
    "daemon",
    "drift_monitor",
    "identity",
    "inputs",
    "learning",
    "link",
    "localapi",
    "localclient",
    "metrics",
    "predict",
    "runtime",
    "samples",
    "serving",
    "shadow",
    "spool",
    "system",
    "telemetry",
    "updates",
]
