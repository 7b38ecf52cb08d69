"""Federated training over the fleet's MQTT: Flower strategies through an MQTT ``Grid``."""
