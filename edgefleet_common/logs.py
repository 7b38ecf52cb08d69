"""Structured logging for the daemons.

One line per event: plain text for people at a terminal, JSON lines otherwise
(what journald, Loki and friends ingest); ``log_format = "auto"`` picks by
whether stderr is a terminal.  Libraries that print on their own (Flower's
coloured console handler) are folded into the one handler, so nothing is said
twice, and HTTP client request lines are debug-level.  A redacting filter
scrubs anything that looks like a secret (bearer tokens, enrollment tokens,
passwords, PEM keys) from every record, so a careless ``log.info("%s", request)``
cannot leak one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Literal

_SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)((?:password|passwd|secret|token|api_key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
]


def redact(text: str) -> str:
    """Replace secret-looking values in ``text`` with ``***``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("***PRIVATE KEY***", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


QUIET_BELOW_DEBUG = ("httpx", "httpcore")
"""Loggers whose INFO lines are per-request chatter: shown only at DEBUG."""
OWN_HANDLERS = ("flwr",)
"""Libraries that install a console handler of their own on import."""


def resolve_format(fmt: Literal["auto", "json", "text"]) -> Literal["json", "text"]:
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


def _adopt(name: str) -> None:
    """Make ``name`` log through the root handler only, now and after it is imported."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    # The library adds its handler when it is imported, which may be after this call.
    setattr(logger, "addHandler", lambda handler: None)  # noqa: B010
    logger.propagate = True


def configure(level: str = "INFO", fmt: Literal["auto", "json", "text"] = "text") -> None:
    """Install one stderr handler with redaction on the root logger (idempotent)."""
    fmt = resolve_format(fmt)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_edgefleet", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._edgefleet = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in QUIET_BELOW_DEBUG:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in OWN_HANDLERS:
        _adopt(name)
