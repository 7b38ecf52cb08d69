"""Server-to-device commands: validated, dispatched off the network thread, always answered.

Every command gets exactly one :class:`CommandAck`: ``done``/``failed`` from its
handler, ``rejected`` when the name is unknown, the arguments are invalid or
the command has expired.  Handlers run on one worker thread so a slow one (an
update download) never stalls the MQTT loop, and commands run in arrival order.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from edgefleet_common.background import BackgroundThread
from edgefleet_contract.errors import EdgefleetError
from edgefleet_contract.messages import Command, CommandAck, Scalar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str = ""
    result: dict[str, Scalar] | None = None


Handler = Callable[[Command], Outcome]


class CommandRouter:
    """Maps command names to handlers and answers each command once."""

    def __init__(
        self,
        device_id: str,
        reply: Callable[[CommandAck], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._device_id = device_id
        self._reply = reply
        self._clock = clock
        self._handlers: dict[str, Handler] = {}
        self._queue: queue.Queue[Command | None] = queue.Queue(maxsize=1000)
        self._worker = BackgroundThread("commands", self._run)
        self.register("ping", lambda cmd: Outcome(True, "pong"))

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def submit(self, command: Command) -> None:
        """Called from the network thread: never blocks, refuses when saturated."""
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._answer(command, "rejected", "the device is busy: too many queued commands")

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._worker.stop(timeout)

    def _run(self) -> None:
        while (command := self._queue.get()) is not None:
            self.handle(command)

    def handle(self, command: Command) -> None:
        """Run one command synchronously and answer it (the worker calls this)."""
        handler = self._handlers.get(command.name)
        if handler is None:
            known = ", ".join(self.names)
            self._answer(command, "rejected", f"unknown command {command.name!r} (known: {known})")
            return
        if command.expires_at is not None and command.expires_at < self._clock():
            self._answer(command, "rejected", "the command expired before it reached the device")
            return
        try:
            outcome = handler(command)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "args"
            self._answer(command, "rejected", f"invalid arguments: {where}: {first.get('msg')}")
            return
        except EdgefleetError as exc:
            self._answer(command, "failed", str(exc))
            return
        except Exception as exc:
            log.exception("command %s (%s) crashed", command.name, command.id)
            self._answer(command, "failed", f"internal error: {type(exc).__name__}")
            return
        self._answer(
            command, "done" if outcome.ok else "failed", outcome.detail, outcome.result or {}
        )

    def _answer(
        self,
        command: Command,
        status: str,
        detail: str,
        result: dict[str, Scalar] | None = None,
    ) -> None:
        ack = CommandAck(
            device_id=self._device_id,
            command_id=command.id,
            ts=self._clock(),
            status=status,  # type: ignore[arg-type]
            detail=detail[:2000],
            result=result or {},
        )
        self._reply(ack)
