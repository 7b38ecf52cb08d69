"""The local prediction API over real sockets: encodings, refusals, keep-alive, slow clients."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent import localclient
from agent.config import LocalApiSettings
from agent.localapi import IDLE_TIMEOUT_S, LocalApi
from agent.samples import SampleStore
from agent.serving import ModelService

DIST = Path(__file__).resolve().parent.parent / "fleet_server" / "factory_models"
MODEL = DIST / "digits-1.0.0-onnx-int8.efpkg"


def _holdout() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(Path(__file__).with_name("data") / "digits_holdout.npz")
    return data["x"].astype(np.float32), data["y"]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ModelService]:
    store = SampleStore(tmp_path / "samples.db", max_samples=100)
    svc = ModelService(samples=store)
    svc.replace(MODEL)
    yield svc
    store.close()


@pytest.fixture
def api(service: ModelService) -> Iterator[LocalApi]:
    server = LocalApi(service, LocalApiSettings(port=0, max_batch=32, max_body_bytes=64 * 1024))
    server.start()
    yield server
    server.stop()


def call(
    api: LocalApi,
    method: str,
    path: str,
    body: bytes | None = None,
    ctype: str = "application/json",
) -> tuple[int, dict]:
    status, doc = localclient.request(api.address, method, path, body, ctype)
    assert isinstance(doc, dict)
    return status, doc


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_loopback_only_by_default(api: LocalApi) -> None:
    assert LocalApiSettings().host == "127.0.0.1"
    assert api.address.startswith("http://127.0.0.1:")
    port = int(api.address.rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the LAN address
            lan = probe.getsockname()[0]
        except OSError:
            lan = "127.0.0.1"
    if lan.startswith("127."):
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(OSError), socket.create_connection((lan, port), timeout=2):
        pass


def test_three_encodings_agree_with_in_process(api: LocalApi, service: ModelService) -> None:
    x, _ = _holdout()
    expected = service.predict(x[:5])
    bodies = [
        (json.dumps({"inputs": x[:5].tolist()}).encode(), "application/json"),
        (x[:5].astype("<f4").tobytes(), "application/octet-stream"),
        (npy(x[:5].reshape(5, 8, 8).astype(np.int16)), "application/x-npy"),
    ]
    for body, ctype in bodies:
        status, doc = call(api, "POST", "/v1/predict", body, ctype)
        assert status == 200, doc
        rows = doc["predictions"]
        assert [r["class_id"] for r in rows] == expected.classes.tolist()
        assert [r["label"] for r in rows] == list(expected.labels)
        assert len(rows[0]["probabilities"]) == 10 and 0 < rows[0]["confidence"] <= 1
        assert len({r["id"] for r in rows}) == 5
    status, doc = call(api, "POST", "/v1/predict", json.dumps({"inputs": x[0].tolist()}).encode())
    assert status == 200 and len(doc["predictions"]) == 1
    assert doc["model"] == {"name": "digits", "version": "1.0.0"}


def test_health_model_and_feedback(api: LocalApi, service: ModelService) -> None:
    x, y = _holdout()
    assert call(api, "GET", "/v1/health") == (200, {"status": "ok", "model": "digits@1.0.0"})
    status, info = call(api, "GET", "/v1/model")
    assert status == 200 and info["sha256"] == service.model.ref.sha256  # type: ignore[union-attr]
    assert info["self_test"]["vectors"] >= 10
    _, doc = call(api, "POST", "/v1/predict", json.dumps({"inputs": x[:2].tolist()}).encode())
    first = doc["predictions"][0]
    body = json.dumps({"prediction_id": first["id"], "label": str(y[0])}).encode()
    correct = first["label"] == str(y[0])
    assert call(api, "POST", "/v1/feedback", body) == (200, {"stored": True, "correct": correct})
    status, problem = call(api, "POST", "/v1/feedback", body)
    assert status == 404 and "unknown or expired" in problem["error"]["detail"]
    second = doc["predictions"][1]["id"]
    bad = json.dumps({"prediction_id": second, "label": "zebra"}).encode()
    status, problem = call(api, "POST", "/v1/feedback", bad)
    assert status == 422 and "unknown label" in problem["error"]["detail"]


BAD_PREDICTS = [
    (b'{"inputs": [1, 2,', "application/json", 422, "not valid JSON"),
    (b'{"rows": [[1]]}', "application/json", 422, '"inputs"'),
    (json.dumps({"inputs": [[0.0] * 63]}).encode(), "application/json", 422, "expects"),
    (json.dumps({"inputs": [["a"] * 64]}).encode(), "application/json", 422, "only numbers"),
    (json.dumps({"inputs": [[0.0] * 64, [0.0] * 3]}).encode(), "application/json", 422, "lengths"),
    (b'{"inputs": [' + b"NaN, " * 63 + b"1]}", "application/json", 422, "not a number"),
    (json.dumps({"inputs": [[1e39] * 64]}).encode(), "application/json", 422, "NaN or infinite"),
    (json.dumps({"inputs": [[0.0] * 64] * 33}).encode(), "application/json", 422, "33 rows"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "limit"),
    (b"[" * 30_000, "application/json", 422, "JSON"),
    (b"\x00" * 100, "application/octet-stream", 422, "whole number of rows"),
    (b"not an array", "application/x-npy", 422, ".npy"),
    (b"PK\x03\x04" + b"\x00" * 40, "application/x-npy", 422, "not an .npz archive"),
    (npy(np.array([["a"] * 64])), "application/x-npy", 422, "integers or floats"),
    (npy(np.zeros((2, 63))), "application/x-npy", 422, "expects"),
    (b"1,2,3", "text/csv", 415, "not supported"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "message"), BAD_PREDICTS)
def test_malformed_predicts_are_4xx_with_a_message(
    api: LocalApi, body: bytes, ctype: str, status: int, message: str
) -> None:
    got, doc = call(api, "POST", "/v1/predict", body, ctype)
    assert got == status, doc
    assert doc["error"]["status"] == status and message in doc["error"]["detail"]
    assert call(api, "GET", "/v1/health")[0] == 200  # and the server is still fine


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/predict", None, 405),
        ("PUT", "/v1/predict", b"{}", 405),
        ("DELETE", "/v1/model", None, 405),
        ("POST", "/v1/health", b"{}", 405),
        ("GET", "/nope", None, 404),
        ("POST", "/v1/feedback", b"[]", 400),
        ("POST", "/v1/feedback", b"{bad", 400),
        ("POST", "/v1/feedback", b'{"prediction_id": "", "label": "1"}', 422),
        ("POST", "/v1/feedback", b'{"prediction_id": "x", "label": true}', 422),
        ("POST", "/v1/feedback", b'{"prediction_id": "x", "label": "1"}', 404),
    ],
)
def test_routes_refuse_plainly(
    api: LocalApi, method: str, path: str, body: bytes | None, status: int
) -> None:
    got, doc = call(api, method, path, body)
    assert got == status and doc["error"]["detail"]


def test_garbage_on_the_wire_gets_a_json_4xx(api: LocalApi) -> None:
    host, port = api.address.removeprefix("http://").split(":")
    for request in (
        b"HELLO\r\n\r\n",
        b"GET /v1/health HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(request)
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split()[1].startswith(b"4"), head
        assert json.loads(body)["error"]["detail"]
    assert call(api, "GET", "/v1/health")[0] == 200


def test_missing_length_and_no_model(service: ModelService) -> None:
    empty = LocalApi(ModelService(), LocalApiSettings(port=0))
    empty.start()
    try:
        status, doc = call(empty, "POST", "/v1/predict", b'{"inputs": [1]}')
        assert status == 503 and "no model" in doc["error"]["detail"]
        assert call(empty, "GET", "/v1/health")[0] == 503
        assert call(empty, "GET", "/v1/model")[0] == 503
        host, port = empty.address.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.recv(200).startswith(b"HTTP/1.1 411")
    finally:
        empty.stop()


def test_keep_alive_and_a_stalled_client_does_not_block_others(api: LocalApi) -> None:
    x, _ = _holdout()
    host, port = api.address.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)), timeout=5)
    stalled.sendall(b"POST /v1/predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")  # and stops
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"inputs": x[:1].tolist()}).encode()
    for _ in range(20):  # one connection, many requests
        conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["predictions"]
    conn.close()
    results: list[int] = []

    def client() -> None:
        for _ in range(10):
            results.append(localclient.request(api.address, "POST", "/v1/predict", body)[0])

    workers = [threading.Thread(target=client) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [200] * 40
    stalled.settimeout(IDLE_TIMEOUT_S + 10)
    answer = b""
    while chunk := stalled.recv(4096):  # closed after the idle timeout, not held forever
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
    stalled.close()


def test_unix_socket(service: ModelService, tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    path.parent.mkdir()
    path.write_bytes(b"")  # not a socket: refused, never deleted
    blocked = LocalApi(service, LocalApiSettings(unix_socket=path))
    with pytest.raises(Exception, match="not a socket"):
        blocked.start()
    path.unlink()
    api = LocalApi(service, LocalApiSettings(unix_socket=path))
    api.start()
    try:
        assert path.is_socket() and oct(path.stat().st_mode & 0o777) == "0o660"
        x, _ = _holdout()
        status, doc = localclient.predict(api.address, x[:3])
        assert status == 200 and len(doc["predictions"]) == 3
    finally:
        api.stop()
    assert not path.exists()


def test_fuzzed_bodies_never_get_a_5xx(service: ModelService) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server = LocalApi(service, LocalApiSettings(port=0, max_batch=8, max_body_bytes=8192))
    server.start()
    numbers = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70)
    )
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5)),
        lambda inner: st.lists(inner, max_size=70) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=300,
    )
    bodies = st.one_of(
        st.binary(max_size=600),
        json_values.map(lambda v: json.dumps({"inputs": v}).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
    )
    types = st.sampled_from(
        ["application/json", "application/octet-stream", "application/x-npy", "text/plain", ""]
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, ctype=types, path=st.sampled_from(["/v1/predict", "/v1/feedback"]))
    def check(body: bytes, ctype: str, path: str) -> None:
        status, doc = localclient.request(server.address, "POST", path, body, ctype)
        assert status < 500, doc
        if status >= 400:
            assert doc["error"]["detail"]

    try:
        check()
        assert call(server, "GET", "/v1/health")[0] == 200
    finally:
        server.stop()
