"""The RabbitMQ client-id check: its one rule, and the HTTP answers the nodes read."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from fleet_server.rabbitmq_authz import ADVANCED_CONFIG, ClientIdCheck, allowed, node_config


@pytest.mark.parametrize(
    ("question", "params", "answer"),
    [
        ("vhost", {"username": "dev-1", "client_id": "dev-1"}, True),
        ("vhost", {"username": "dev-1", "client_id": "dev-2"}, False),
        ("vhost", {"username": "dev-1", "client_id": ""}, False),
        ("vhost", {"username": "dev-1", "client_id": "fleet.server"}, False),
        ("vhost", {"username": "dev-1"}, True),  # AMQP, management: no client id
        ("vhost", {"username": "fleet.server", "client_id": "fleet.server.r2"}, True),
        ("vhost", {"username": "fleet-admin"}, True),
        ("resource", {"username": "dev-1", "client_id": "dev-2"}, True),
        ("topic", {"username": "dev-1", "variable_map.client_id": "dev-2"}, True),
        ("user", {"username": "dev-1"}, True),
        ("anything", {"username": "dev-1"}, False),
    ],
)
def test_the_rule(question: str, params: dict[str, str], answer: bool) -> None:
    assert allowed(question, params) is answer


@pytest.fixture
def check() -> Iterator[ClientIdCheck]:
    c = ClientIdCheck().start()
    yield c
    c.stop()


def test_answers_over_http_and_counts_refusals(
    check: ClientIdCheck, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleet_server.rabbitmq_authz")
    with httpx.Client(base_url=check.url) as http:
        own = http.post("/vhost", data={"username": "dev-1", "vhost": "/", "client_id": "dev-1"})
        claimed = http.post("/vhost", data={"username": "dev-1", "client_id": "dev-2"})
        login = http.post("/user", data={"username": "fleet-admin", "password": "s3cret-pw"})
        by_get = http.get("/vhost", params={"username": "dev-1", "client_id": "dev-3"})
        unknown = http.post("/other", data={"username": "dev-1"})
    assert [r.status_code for r in (own, claimed, login, by_get, unknown)] == [200] * 5
    assert [r.text for r in (own, claimed, login, by_get, unknown)] == [
        "allow",
        "deny",
        "allow",
        "deny",
        "deny",
    ]
    assert check.refused == 2
    assert "'dev-2'" in caplog.text and "s3cret-pw" not in caplog.text


def test_an_oversized_or_malformed_question_is_denied(check: ClientIdCheck) -> None:
    with httpx.Client(base_url=check.url) as http:
        big = http.post("/vhost", content=b"username=dev-1&" + b"x" * 9000)
    assert (big.status_code, big.text) == (413, "deny")
    host, port = check.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /vhost HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        answer = raw.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413") and answer.endswith(b"deny")


def test_stopping_twice_or_before_start_returns() -> None:
    ClientIdCheck().stop()
    c = ClientIdCheck().start()
    c.stop()
    c.stop()


def test_node_configuration_points_every_question_at_the_checker() -> None:
    conf = node_config("http://127.0.0.1:9999/")
    for q in ("user", "vhost", "resource", "topic"):
        assert f"auth_http.{q}_path = http://127.0.0.1:9999/{q}\n" in conf
    assert "rabbit_auth_backend_internal, rabbit_auth_backend_http" in ADVANCED_CONFIG


def test_the_command_refuses_a_listen_address_it_cannot_use() -> None:
    from click.testing import CliRunner

    from fleet_server.cli import cli

    bad = CliRunner().invoke(cli, ["broker-authz", "--listen", "nope"])
    assert bad.exit_code == 2 and "'nope' is not host:port" in bad.output


def test_a_stopped_check_closes_the_connections_kept_open() -> None:
    c = ClientIdCheck().start()
    with httpx.Client(base_url=c.url) as http:
        assert http.post("/vhost", data={"username": "dev-1"}).text == "allow"
        c.stop()
        with pytest.raises(httpx.TransportError):
            http.post("/vhost", data={"username": "dev-1"})
