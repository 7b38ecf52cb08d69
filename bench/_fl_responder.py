"""Many devices' federated answers from one process, for the round-overhead benchmark.

One MQTT session (the server identity, which the broker ACL lets touch every
``devices/{id}/#``) subscribes to ``devices/+/fl/in``, reassembles each device's
instruction, and answers on that device's ``fl/out`` at once with the global
arrays nudged by a little noise: the native wire path of a device without the
time its training takes, so a round's wall time is the server's overhead.
Run as ``python -m bench._fl_responder PORT CA CERT KEY``; prints ``ready``.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import paho.mqtt.client as paho

from edgefleet_common.mqtt import Endpoint, MqttSession, TlsFiles
from edgefleet_contract import flframes, flwire
from edgefleet_contract.topics import Channel


class Responder(MqttSession):
    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__("fl-bench-responder", endpoint, clean_start=True)
        self._reassembler = flframes.Reassembler(max_partial=100_000)
        self._rng = np.random.default_rng(0)
        self.ready = threading.Event()

    def _on_connected(self) -> None:
        self.subscribe([(f"devices/+/{Channel.FL_IN.value}", 1)])
        self.ready.set()

    def _on_message(self, message: paho.MQTTMessage) -> None:
        device_id = message.topic.split("/")[1]
        data = self._reassembler.feed(device_id, message.payload, 0.0)
        if data is None:
            return
        envelope, arrays, _ = flwire.decode(data)
        if envelope.kind not in ("train", "evaluate"):
            return
        out = {k: v + self._rng.normal(0, 1e-3, v.shape).astype(v.dtype) for k, v in arrays.items()}
        metrics = {"num-examples": 50.0, "loss": 0.5, "accuracy": 0.8}
        answer = flwire.reply(envelope, metrics)
        payload = flwire.encode(answer, out if envelope.kind == "train" else {})
        for frame in flframes.split(payload, 256 * 1024):
            self.publish(f"devices/{device_id}/{Channel.FL_OUT.value}", frame, qos=1)


def main() -> None:
    port, ca, cert, key = sys.argv[1:5]
    from pathlib import Path

    tls = TlsFiles(Path(ca), Path(cert), Path(key))
    responder = Responder(Endpoint("127.0.0.1", int(port), tls))
    responder.start()
    responder.ready.wait(30)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    responder.stop()


if __name__ == "__main__":
    main()
