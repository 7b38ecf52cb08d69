"""``fleetctl``: the operator CLI over the REST API (one module per area of commands)."""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "cli",
    "client",
    "cmd_admin",
    "cmd_artifacts",
    "cmd_devices",
    "cmd_keys",
    "cmd_pack",
    "cmd_rollouts",
    "cmd_telemetry",
    "cmd_train",
    "conventions",
    "examples",
    "output",
]
