"""The HTTP client fleetctl uses, and where its login is kept.

The login (server URL + API token) lives in ``~/.config/edgefleet/fleetctl.json``
(mode 0600); ``FLEETCTL_SERVER`` / ``FLEETCTL_TOKEN`` / ``FLEETCTL_CONFIG``
override it, which is what CI jobs use.  ``transport`` is the seam tests use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from edgefleet_contract.errors import AuthError, ConfigError, EdgefleetError


class ApiError(EdgefleetError):
    """The server answered with a problem; ``str()`` is its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def config_path() -> Path:
    env = os.environ.get("FLEETCTL_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "edgefleet" / "fleetctl.json"


NOT_LOGGED_IN = (
    "not logged in: run `fleetctl login --server URL -u USER` "
    "(or set FLEETCTL_SERVER and FLEETCTL_TOKEN)"
)


@dataclass(frozen=True)
class Login:
    server: str | None
    """None until a login (or FLEETCTL_SERVER) names one: no server is guessed."""
    token: str | None

    def require_server(self) -> str:
        if self.server is None:
            raise AuthError(NOT_LOGGED_IN)
        return self.server


def load_login() -> Login:
    saved: dict[str, Any] = {}
    path = config_path()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise EdgefleetError(f"{path} is corrupt; run `fleetctl login` again") from None
    server = os.environ.get("FLEETCTL_SERVER") or saved.get("server") or None
    token = os.environ.get("FLEETCTL_TOKEN") or saved.get("token") or None
    return Login(str(server).rstrip("/") if server else None, token)


def check_server_url(url: str) -> str:
    """``url`` as the base of the API, or a :class:`ConfigError` that says how it is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--server {url!r} is not a URL; give the fleet server's address, "
            "e.g. https://fleet.example:8080"
        )
    if parts.path.rstrip("/").endswith("/api/v1") or parts.path.rstrip("/").endswith("/console"):
        base = url.strip().rstrip("/").rsplit("/", 2)[0]
        raise ConfigError(
            f"--server {url!r} has a path that belongs to the server ({parts.path}); "
            f"give its base address: --server {base}"
        )
    return url.strip().rstrip("/")


def save_login(server: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"server": server.rstrip("/"), "token": token}, fh)
    os.chmod(path, 0o600)
    return path


def forget_login() -> None:
    """Drop the token, keep the server URL (so the next `fleetctl login` needs no --server)."""
    login = load_login()
    path = config_path()
    if path.exists() and login.server:
        save_login(login.server, "")


class Client:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=server.rstrip("/") + "/api/v1",
            headers=headers,
            transport=transport,
            timeout=timeout,
        )

    def request(self, method: str, path: str, *, text: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON (``text``: its body as text, e.g. Markdown)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise EdgefleetError(
                f"cannot reach the fleet server at {self._http.base_url}: {exc}"
            ) from None
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail", response.text))
            except ValueError:
                detail = response.text or response.reason_phrase
            if response.status_code == 401:
                hint = "" if "fleetctl login" in detail else " (run `fleetctl login`)"
                raise AuthError(detail + hint)
            if response.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
                # No route at all (our own 404s name the missing thing): a wrong URL.
                raise ApiError(
                    response.status_code,
                    f"{response.request.url} is not an edgefleet API route "
                    f"({response.status_code} {response.reason_phrase}); check the server "
                    "URL (`fleetctl login --server URL`, FLEETCTL_SERVER): it is the "
                    "server's base address, e.g. https://fleet.example:8080",
                )
            raise ApiError(response.status_code, detail)
        if response.status_code == 204 or not response.content:
            return None
        return response.text if text else response.json()

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def get_text(self, path: str, **params: Any) -> str:
        clean = {k: v for k, v in params.items() if v is not None}
        return str(self.request("GET", path, text=True, params=clean) or "")

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def close(self) -> None:
        self._http.close()
