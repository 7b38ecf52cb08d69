"""Federated rounds on the device: frames in, a worker thread, frames out.

Frames from ``devices/{id}/fl/in`` are reassembled on the network thread (cheap)
and whole instructions are queued for one worker thread, so predictions keep
being served while a round trains.  Plain train/evaluate instructions arrive as
:mod:`edgefleet_contract.flwire` envelopes and are answered with numpy only
(:mod:`.native`), so the agent install trains without Flower.  Only rounds that
need Flower on the device (SecAgg+, local DP) import it, lazily, and a device
without the ``fl`` extra answers those at once with ``missing_extra``.

Resource rules: training runs with at most ``threads`` BLAS threads; when the
``skip`` policy names a reason (on battery, busy serving), the round trains
another model than the device serves, or the device has no samples, it answers
with an error reply and a reason code at once instead of training, so the
server's round does not wait for it and its failures column says why.  The
queue is small and bounded; what it drops is counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from edgefleet_common.background import BackgroundThread
from edgefleet_contract import flframes, flwire
from edgefleet_contract.codec import DEFAULT_MAX_PAYLOAD
from edgefleet_contract.errors import ContractError, EdgefleetError

if TYPE_CHECKING:
    from flwr.app import Message

    from .backbone import Backbone
    from .native import DataSource

log = logging.getLogger(__name__)

ERR_SKIPPED = 801
ERR_FAILED = 802

SkipPolicy = Callable[[], str | None]


class LearningWorker:
    def __init__(
        self,
        send: Callable[[bytes], bool],
        data: DataSource,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        threads: int = 1,
        skip: SkipPolicy | None = None,
        max_queue: int = 4,
        on_trained: Callable[[], None] | None = None,
        model: Callable[[], str | None] | None = None,
        backbone: Callable[[], Backbone | None] | None = None,
    ) -> None:
        self._send = send
        self._data = data
        self.max_payload = max_payload
        self._threads = threads
        self._skip = skip
        self._on_trained = on_trained
        self._model = model
        """The name of the model the device serves (``None``: none loaded)."""
        self._backbone = backbone
        """The served package's frozen backbone, for a round that trains its head."""
        self._reassembler = flframes.Reassembler()
        self._frames_lock = threading.Lock()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_queue)
        self._thread = BackgroundThread("learning", self._run)
        """Started by the first instruction (most devices never train); ends on ``None``."""
        self._contexts: dict[int, object] = {}
        """Per-run Flower contexts: SecAgg+ keeps its protocol state there across stages."""
        self._secure_client: object | None = None
        self.busy = threading.Event()
        self.last_train_s = 0.0
        """Wall time of the last local training (round overhead = round time minus this)."""
        self.counts: Counter[str] = Counter()
        """handled / skipped / failed / dropped_queue_full / unsent, for telemetry and tests."""

    def on_frame(self, frame: bytes) -> None:
        """Called on the MQTT network thread: never blocks, never raises."""
        with self._frames_lock:
            data = self._reassembler.feed("server", frame, time.monotonic())
        if data is None:
            return
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self.counts["dropped_queue_full"] += 1
            log.warning("federated instruction dropped: the learning queue is full")
            return
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if not self._alive():
            self._thread.start()

    def stop(self) -> None:
        if self._alive():
            self._queue.put(None)  # the loop waits on the queue, not on the stop event
            self._thread.stop(10)

    def _alive(self) -> bool:
        thread = self._thread.thread
        return thread is not None and thread.is_alive()

    @property
    def dropped_frames(self) -> dict[str, int]:
        return dict(self._reassembler.dropped)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            self.busy.set()
            try:
                self._handle(data)
            except Exception:
                self.counts["failed"] += 1
                log.exception("federated instruction failed")
            finally:
                self.busy.clear()

    def _handle(self, data: bytes) -> None:
        try:
            envelope, arrays, body = flwire.decode(data)
        except ContractError as exc:
            self.counts["undecodable"] += 1
            log.warning("%s", exc)
            return
        if envelope.kind in ("train", "evaluate"):
            reply, out = self.answer_native(envelope, arrays)
            payload = flwire.encode(reply, out)
        elif envelope.kind == "flower":
            payload = self._answer_flower(envelope, body)
        else:
            self.counts["undecodable"] += 1
            log.warning("federated %s sent to a device is ignored", envelope.kind)
            return
        for frame in flframes.split(payload, self.max_payload):
            if not self._send(frame):
                self.counts["unsent"] += 1
                return

    def refusal(self, model: object) -> tuple[str, str] | None:
        """(code, reason) when this device must not take part now, checked before any work."""
        reason = self._skip() if self._skip is not None else None
        if reason is not None:
            return flwire.NOT_ELIGIBLE, f"skipped: {reason}"
        serving = self._model() if self._model is not None else None
        if isinstance(model, str) and model and serving is not None and serving != model:
            return flwire.WRONG_MODEL, f"the round trains {model}; this device serves {serving}"
        return None

    def answer_native(
        self, instruction: flwire.FlEnvelope, arrays: flwire.Arrays
    ) -> tuple[flwire.FlEnvelope, flwire.Arrays]:
        """The reply to a plain train/evaluate instruction: numpy only, no Flower."""
        from . import native

        refused = self.refusal(instruction.config.get("model"))
        if refused is not None:
            self.counts["skipped"] += 1
            return flwire.error_reply(instruction, *refused), {}
        started = time.perf_counter()
        try:
            with _limit_threads(self._threads):
                backbone = self._backbone() if self._backbone is not None else None
                reply, out = native.answer(instruction, arrays, self._data, backbone)
        except native.Refused as exc:
            self.counts["refused"] += 1
            log.warning("federated %s refused: %s", instruction.kind, exc)
            return flwire.error_reply(instruction, exc.code, str(exc)), {}
        except (EdgefleetError, ValueError, KeyError, TypeError) as exc:
            self.counts["failed"] += 1
            log.warning("federated %s failed: %s", instruction.kind, exc)
            return flwire.error_reply(instruction, flwire.FAILED, str(exc)[:500]), {}
        self.counts["handled"] += 1
        if instruction.kind == "train":
            self.last_train_s = time.perf_counter() - started
            if self._on_trained is not None:
                self._on_trained()
        return reply, out

    def _answer_flower(self, envelope: flwire.FlEnvelope, body: bytes) -> bytes:
        """A round only Flower can run here (SecAgg+, local DP): needs the ``fl`` extra."""
        try:
            import flwr  # noqa: F401

            from edgefleet_common import flower_compat
        except ImportError:
            self.counts["refused"] += 1
            detail = (
                "this round needs Flower on the device (SecAgg+ or local DP); "
                "install the agent with the fl extra: pip install 'edgefleet[agent,fl]'"
            )
            log.warning("federated round refused: %s", detail)
            return flwire.encode(flwire.error_reply(envelope, flwire.MISSING_EXTRA, detail))
        try:
            message = flower_compat.decode(body)
        except ContractError as exc:
            self.counts["undecodable"] += 1
            return flwire.encode(flwire.error_reply(envelope, flwire.BAD_INSTRUCTION, str(exc)))
        reply = self.answer(message)
        return flwire.encode(flwire.flower_reply(envelope), body=flower_compat.encode(reply))

    def answer(self, message: Message) -> Message:
        """The reply to one Flower instruction (training, evaluation, or an error reply)."""
        from flwr.app import Context, Error, Message, RecordDict

        from .client_app import build_app, local_dp_for

        refused = self.refusal(_config_model(message))
        if refused is not None:
            self.counts["skipped"] += 1
            return Message(Error(ERR_SKIPPED, refused[1]), reply_to=message)
        from .secure import SampleClient, is_secure, secure_app

        context = Context(
            run_id=message.metadata.run_id,
            node_id=message.metadata.dst_node_id,
            node_config={},
            state=RecordDict(),
            run_config={},
        )
        if is_secure(message):
            if not isinstance(self._secure_client, SampleClient):
                self._secure_client = SampleClient(self._data)
            app = secure_app(self._secure_client)
            context = self._contexts.setdefault(message.metadata.run_id, context)  # type: ignore[assignment]
            if len(self._contexts) > 4:
                self._contexts.pop(next(iter(self._contexts)))
        else:
            app = build_app(self._data, local_dp=local_dp_for(message))
        started = time.perf_counter()
        try:
            with _limit_threads(self._threads):
                reply = app(message, context)
        except (EdgefleetError, ValueError, KeyError, TypeError) as exc:
            self.counts["failed"] += 1
            log.warning("federated %s failed: %s", message.metadata.message_type, exc)
            return Message(Error(ERR_FAILED, str(exc)[:500]), reply_to=message)
        self.counts["handled"] += 1
        if message.metadata.message_type == "train":
            self.last_train_s = time.perf_counter() - started
            if self._on_trained is not None:
                self._on_trained()
        return reply


def _config_model(message: Message) -> object:
    if not message.has_content() or "config" not in message.content.config_records:
        return None
    return message.content.config_records["config"].get("model")


def skip_reason(power: str, *, allow_battery: bool = False) -> str | None:
    """The device's own veto: no training on battery (it drains what the device runs on).

    ``power`` is :func:`agent.system.power_source`'s first value; reading it directly
    (not through the telemetry probe) leaves the probe's CPU-percent window alone."""
    if power == "battery" and not allow_battery:
        return "on battery"
    return None


def _limit_threads(threads: int) -> AbstractContextManager[object]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - numpy then uses its default
        return nullcontext()
    limits: AbstractContextManager[object] = threadpool_limits(limits=threads)
    return limits
