"""The clustered broker: a RabbitMQ cluster with its MQTT plugin.

Devices speak MQTT 3.1.1 over mTLS to any node; the certificate's CN is the
RabbitMQ user (``mqtt.ssl_cert_login``), which exists only while the device is
enrolled and not revoked.  Each device user gets exact permissions: its own MQTT
session queues, and topic rights on ``devices.{id}.<channel>`` for the channels it
publishes (telemetry, state, status, ack, fl/out) and the ones it reads (cmd,
fl/in).  The topic rule also requires the MQTT client id to equal the user, so a
device cannot use another device's session.

The server does not subscribe over MQTT for ingest: it consumes one replicated
quorum queue over AMQP (:mod:`fleet_server.amqp_ingest`).  Downstream messages
(commands, FL frames) go out on an MQTT session like in the other modes, to
whichever node answers.  This module holds the management side: users, rights,
revocation, health and the presence sweep.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx

from edgefleet_common.background import IntervalThread
from edgefleet_contract.errors import BrokerError

from .config import SERVER_IDENTITY

log = logging.getLogger(__name__)

EXCHANGE = "amq.topic"
DEVICE_WRITES = ("telemetry", "state", "status", "ack", "fl.out")
DEVICE_READS = ("cmd", "fl.in")


def device_permissions(device_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """Vhost permissions and topic permissions for one device user.

    ``{client_id}`` is expanded by the broker on every check: the look-ahead makes
    every topic right void unless the connection's client id is the device id.
    """
    queues = f"^mqtt-subscription-{device_id}qos[01]$"
    perms = {
        "configure": queues,
        "write": f"{queues}|^amq\\.topic$",
        "read": f"{queues}|^amq\\.topic$",
    }
    guard = "^(?=devices\\.{client_id}\\.)"
    writes = "|".join(c.replace(".", "\\.") for c in DEVICE_WRITES)
    reads = "|".join(c.replace(".", "\\.") for c in DEVICE_READS)
    topic_perms = {
        "exchange": EXCHANGE,
        "write": f"{guard}devices\\.{device_id}\\.({writes})$",
        "read": f"{guard}devices\\.{device_id}\\.({reads})$",
    }
    return perms, topic_perms


class RabbitAdmin:
    """The cluster's management HTTP API, tried node after node until one answers."""

    def __init__(self, urls: Sequence[str], user: str, password: str, *, vhost: str = "/") -> None:
        if not urls:
            raise BrokerError("broker.management_urls is empty: the server cannot manage users")
        self._urls = list(urls)
        self._auth = (user, password)
        self._vhost = urllib.parse.quote(vhost, safe="")
        self._client = httpx.Client(timeout=30)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        last = "no node tried"
        for url in list(self._urls):
            try:
                r = self._client.request(method, f"{url}/api{path}", auth=self._auth, **kw)
            except httpx.HTTPError as exc:
                last = f"{url}: {exc}"
                continue
            if r.status_code in (401, 403):
                raise BrokerError(
                    f"the broker's management API refused {self._auth[0]!r} ({r.status_code}); "
                    "check broker.admin_user / broker.admin_password"
                )
            if r.status_code >= 500:
                last = f"{url}: HTTP {r.status_code}"
                continue
            self._urls.remove(url)
            self._urls.insert(0, url)  # keep using the node that answered
            return r
        raise BrokerError(f"no node of the broker cluster answered: {last}")

    def _ok(self, r: httpx.Response, what: str) -> None:
        if r.status_code >= 400 and r.status_code != 404:
            raise BrokerError(f"broker refused to {what}: HTTP {r.status_code} {r.text[:200]}")

    def put_device(self, device_id: str) -> None:
        perms, topic_perms = device_permissions(device_id)
        user = urllib.parse.quote(device_id, safe="")
        self._ok(
            self.request("PUT", f"/users/{user}", json={"password_hash": "", "tags": ""}),
            f"add user {device_id}",
        )
        self._ok(
            self.request("PUT", f"/permissions/{self._vhost}/{user}", json=perms),
            f"set permissions of {device_id}",
        )
        self._ok(
            self.request("PUT", f"/topic-permissions/{self._vhost}/{user}", json=topic_perms),
            f"set topic permissions of {device_id}",
        )

    def put_server(self, identity: str = SERVER_IDENTITY) -> None:
        user = urllib.parse.quote(identity, safe="")
        self._ok(
            self.request("PUT", f"/users/{user}", json={"password_hash": "", "tags": ""}),
            f"add user {identity}",
        )
        all_of = {"configure": ".*", "write": ".*", "read": ".*"}
        self._ok(
            self.request("PUT", f"/permissions/{self._vhost}/{user}", json=all_of),
            f"set permissions of {identity}",
        )

    def import_devices(self, device_ids: Iterable[str], chunk: int = 1000) -> int:
        """Create many device users by definitions import, ``chunk`` users a request
        (one request for 10,000 can outlast an HTTP timeout on a busy node).  Importing
        a user that exists again is harmless, so a retried chunk is too."""
        ids = list(device_ids)
        vhost = urllib.parse.unquote(self._vhost)
        for start in range(0, len(ids), chunk):
            users, perms, topic_perms = [], [], []
            for device_id in ids[start : start + chunk]:
                p, t = device_permissions(device_id)
                users.append({"name": device_id, "password_hash": "", "tags": ""})
                perms.append({"user": device_id, "vhost": vhost, **p})
                topic_perms.append({"user": device_id, "vhost": vhost, **t})
            body = {"users": users, "permissions": perms, "topic_permissions": topic_perms}
            r = self.request("POST", "/definitions", json=body, timeout=300)
            self._ok(r, "import device users")
        return len(ids)

    def users(self) -> set[str]:
        r = self.request("GET", "/users", params={"columns": "name"})
        self._ok(r, "list users")
        return {u["name"] for u in r.json()}

    def remove_device(self, device_id: str) -> int:
        """Delete the user and close every connection it has; returns connections closed."""
        user = urllib.parse.quote(device_id, safe="")
        self._ok(self.request("DELETE", f"/users/{user}"), f"delete user {device_id}")
        closed = 0
        for conn in self.connections():
            if conn.get("user") == device_id:
                name = urllib.parse.quote(str(conn["name"]), safe="")
                r = self.request(
                    "DELETE", f"/connections/{name}", headers={"X-Reason": "identity revoked"}
                )
                closed += r.status_code < 300
        return closed

    def connections(self) -> list[dict[str, Any]]:
        r = self.request(
            "GET", "/connections", params={"columns": "name,user,node,client_properties"}
        )
        self._ok(r, "list connections")
        return list(r.json())

    def health(self) -> dict[str, object]:
        r = self.request("GET", "/nodes", params={"columns": "name,running,mem_used"})
        self._ok(r, "list nodes")
        nodes = r.json()
        return {
            "nodes": len(nodes),
            "running": sum(1 for n in nodes if n.get("running")),
            "memory_bytes": sum(int(n.get("mem_used") or 0) for n in nodes),
        }


def connected_devices(admin: RabbitAdmin) -> set[str]:
    """Users with at least one open connection on any node (the server's own excluded)."""
    return {str(c.get("user")) for c in admin.connections()} - {SERVER_IDENTITY}


class PresenceSweep:
    """Marks offline the devices the store thinks online but no node has a connection for.

    A node that is killed takes its clients' Last Wills with it; devices that come
    back announce themselves, one that does not would stay "online".  The management
    API's view of connections lags by a few seconds, so a device is set offline only
    when it was missing from two listings in a row and nothing was heard from it for
    ``grace_s``.
    """

    def __init__(
        self,
        admin: RabbitAdmin,
        online: Callable[[], dict[str, float]],
        set_offline: Callable[[str], None],
        interval_s: float,
        grace_s: float = 15.0,
    ) -> None:
        self._admin = admin
        self._online = online
        self._set_offline = set_offline
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._suspects: set[str] = set()
        self._thread = IntervalThread(
            "presence-sweep",
            self._sweep_or_skip,
            interval_s=lambda: self.interval_s,
            log=log,
            failure="presence sweep failed; will retry",
        )
        self.marked_offline = 0

    def sweep(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        connected = connected_devices(self._admin)
        last_seen = self._online()
        missing = set(last_seen) - connected
        for device_id in missing & self._suspects:
            if now - last_seen[device_id] >= self.grace_s:
                self._set_offline(device_id)
                self.marked_offline += 1
        self._suspects = missing

    def start(self) -> None:
        self._thread.start()

    def _sweep_or_skip(self) -> None:
        """A broker that does not answer skips one sweep with a warning, no traceback."""
        try:
            self.sweep()
        except (BrokerError, httpx.HTTPError, ValueError) as exc:
            log.warning("presence sweep skipped: %s", exc)

    def stop(self) -> None:
        self._thread.stop(10)


def sync_users(admin: RabbitAdmin, active: Iterable[str], revoked: Iterable[str]) -> None:
    """Make the broker's users exactly: the server, every active device, no revoked one."""
    admin.put_server()
    present = admin.users()
    missing = [d for d in active if d not in present]
    if missing:
        admin.import_devices(missing)
    for device_id in revoked:
        if device_id in present:
            admin.remove_device(device_id)
