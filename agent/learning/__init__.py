"""On-device federated learning (Flower is imported only when a round arrives)."""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "backbone",
    "client_app",
    "native",
    "secure",
    "trainer",
    "worker",
]
