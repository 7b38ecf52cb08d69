"""Federated training over the fleet's MQTT: Flower strategies through an MQTT ``Grid``."""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "app",
    "candidate",
    "deadline",
    "eligibility",
    "fedbuff",
    "fedeval",
    "grid",
    "packages",
    "release",
    "runner",
    "secure",
    "spec",
    "strategies",
    "strategy_state",
    "validate",
    "wire",
    "wiring",
]
