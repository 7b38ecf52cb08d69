"""On-device federated learning (Flower is imported only when a round arrives)."""
