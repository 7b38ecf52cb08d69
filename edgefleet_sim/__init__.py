"""``fleetctl simulate``: many devices on one machine, for load tests and demos.

What is real and what is simplified, so a figure measured with it is read right:

Real (the product's own code, unchanged):
  * enrollment: a device record and a one-time token through the REST API, a key
    pair made on the "device", a CSR, a certificate from the server
    (:func:`agent.identity.enroll`);
  * the whole :class:`agent.daemon.Agent`: its MQTT link with its own certificate
    through the managed broker (mTLS, per-device ACLs, Last Will), the spool, the
    command router (``set_desired`` acks), telemetry from
    :class:`agent.telemetry.TelemetryBuilder` with the inference recorder's window,
    the update service (TUF-verified downloads into A/B slots, phases reported)
    and the federated :class:`agent.learning.worker.LearningWorker`;
  * inference: each device's :class:`agent.serving.ModelService` runs the model on
    every reading and records latency, classes, confidence and drift; feedback
    stores labelled samples that federated training uses.

Simplified for scale:
  * sensors: readings are rows of scikit-learn's digits test split, optionally
    shifted (``--shift``) to provoke the drift detector, and ground truth is the
    split's label;
  * loaded models are shared: every device's service loads a package through a
    per-process cache keyed by the package's SHA-256, so a hundred devices on one
    version hold one runtime session (each device still verifies, stores and
    activates its own copy in its own slots);
  * no local prediction API and no firmware handler (``firmware_handler = "none"``);
  * threads: each agent keeps its own threads (MQTT loop, commands, telemetry,
    renewal, updates), about six per device, in worker processes of at most
    :data:`~.protocol.MAX_PER_PROCESS` devices (:mod:`.pool` starts them,
    :mod:`.worker` runs one, :mod:`.protocol` is what they say to each other).
"""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "command",
    "device",
    "enroll",
    "fleet",
    "models",
    "pool",
    "protocol",
    "sensors",
    "view",
    "worker",
]
