"""Structured logging for the daemons.

JSON lines by default (what journald, Loki and friends ingest), plain text for
people at a terminal.  A redacting filter scrubs anything that looks like a
secret (bearer tokens, enrollment tokens, passwords, PEM keys) from every
record, so a careless ``log.info("%s", request)`` cannot leak one.
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


def configure(level: str = "INFO", fmt: Literal["json", "text"] = "text") -> None:
    """Install one stderr handler with redaction on the root logger (idempotent)."""
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
