"""The wire contract shared by the agent and the fleet server.

Topics, versioned payload models, the codec, the model-package format and the
exception tree live here so that both sides agree by construction.  The agent
imports this package and never ``fleet_server``.
"""

__version__ = "0.1.0"

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "codec",
    "desired_config",
    "drift",
    "drifttest",
    "errors",
    "firmware",
    "flframes",
    "flwire",
    "ids",
    "interpret",
    "manifest_checks",
    "messages",
    "package",
    "preprocess",
    "safezip",
    "summary",
    "task",
    "topics",
]
