"""What the demo shows and how it talks to the server: rich progress, REST calls, waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from edgefleet_contract.errors import EdgefleetError

console = Console()


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) arrived while the demo waited for something."""


class Api:
    """The fleet server's REST API as the admin; failures carry the server's own words."""

    def __init__(self, url: str, password: str) -> None:
        self.url = url
        token = self.call("POST", "/auth/login", json={"username": "admin", "password": password})
        self.headers = {"Authorization": f"Bearer {token['token']}"}

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> Any:
        url = f"{self.url}/api/v1{path}"
        headers = {**getattr(self, "headers", {}), **kwargs.pop("headers", {})}
        try:
            response = httpx.request(method, url, timeout=60, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise EdgefleetError(f"{method} {path} failed: {exc}") from None
        if response.status_code >= 400 and response.status_code not in ok:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise EdgefleetError(f"{method} {path}: {response.status_code} {detail}")
        return response.json() if response.content else None

    def twin(self, device_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("GET", f"/devices/{device_id}/twin")
        return doc


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<36}"),
        BarColumn(),
        TextColumn("{task.completed:>6.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=console,
    )


def step(text: str) -> None:
    console.print(f"\n[bold cyan]▶ {text}[/]")


def wait(
    bar: Progress,
    task: TaskID,
    count: Callable[[], float],
    stop: threading.Event,
    timeout: float = 180,
) -> None:
    """Poll ``count`` into the bar until it reaches the task's total."""
    info = next(t for t in bar.tasks if t.id == task)
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        done = count()
        bar.update(task, completed=done)
        if done >= (info.total or 0):
            return
        if time.monotonic() > deadline:
            raise EdgefleetError(f"demo step timed out after {timeout:.0f}s: {info.description}")
        stop.wait(0.3)
    raise Interrupted
