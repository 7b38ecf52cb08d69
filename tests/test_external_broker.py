"""The server against an external broker configured by URL and credentials."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.broker import find_mosquitto, port_open
from fleet_server.config import ApiSettings, BrokerSettings, ServerSettings
from fleet_server.server import FleetServer, initialize

from .harness import ADMIN_PASSWORD, free_port, wait_for, watch_subacks


def test_external_broker_by_url_and_credentials(tmp_path: Path) -> None:
    port = free_port()
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "fleet", "s3cret-pw"], check=True
    )
    conf = tmp_path / "external.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwords}\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    broker = subprocess.Popen(
        [find_mosquitto("mosquitto"), "-c", str(conf)], stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), what="external broker")
        settings = ServerSettings(
            data_dir=tmp_path / "fleet",
            api=ApiSettings(port=free_port()),
            broker=BrokerSettings(
                mode="external",
                url=f"mqtt://127.0.0.1:{port}",
                username="fleet",
                password="s3cret-pw",
            ),  # type: ignore[arg-type]
        )
        initialize(settings, admin_password=ADMIN_PASSWORD)
        server = FleetServer(settings)
        assert server.broker is None  # nothing managed
        server.store.create_device("ext-1", name="ext-1", tags={}, now=time.time())
        subscribed = watch_subacks(server.link)
        server.start()
        try:
            assert server.link.wait_connected(10), server.link.last_error
            assert subscribed.wait(10), "the server's subscriptions were not granted"
            device = paho.Client(CallbackAPIVersion.VERSION2, client_id="ext-1")
            device.username_pw_set("fleet", "s3cret-pw")
            device.connect("127.0.0.1", port)
            device.loop_start()
            device.publish(
                "devices/ext-1/status",
                b'{"v":1,"device_id":"ext-1","online":true,"reason":"connected"}',
                qos=1,
                retain=True,
            ).wait_for_publish(5)
            wait_for(lambda: server.store.get_device("ext-1").online, what="online via external")
            device.loop_stop()
        finally:
            server.stop()
    finally:
        broker.terminate()
        broker.wait(5)
