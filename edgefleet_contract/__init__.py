"""The wire contract shared by the agent and the fleet server.

Topics, versioned payload models, the codec, the model-package format and the
exception tree live here so that both sides agree by construction.  The agent
imports this package and never ``fleet_server``.
"""

__version__ = "0.1.0"
