"""What an audit entry is about (``device:cam-1``, ``rollout:ro-7``) and why it failed.

The route's path parameters name the object of most actions; a create names it
only in its answer (the new rollout's id), and a refusal gives its reason only
in the problem's ``detail``.  Both are read from the JSON the route answered, so
no route has to remember to feed the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_BUFFERED = 64 * 1024
"""Answers up to this size are read for the audit (every JSON answer of a mutating route)."""

KINDS = {
    "device_id": "device",
    "rollout_id": "rollout",
    "run_id": "training_run",
    "username": "user",
    "token_id": "token",
    "artifact_id": "artifact",
}
"""Path parameter -> the kind of object it names."""

CREATED = {
    "/api/v1/devices": ("device", "device_id", "id"),
    "/api/v1/rollouts": ("rollout", "id"),
    "/api/v1/training/runs": ("training_run", "id"),
    "/api/v1/users": ("user", "username"),
    "/api/v1/tokens": ("token", "token_id", "id"),
    "/api/v1/artifacts/models": ("artifact", "spec", "id"),
    "/api/v1/artifacts/firmware": ("artifact", "spec", "id"),
}
"""Create routes -> the kind of object and the answer's keys that name it, in order."""

REQUESTED = {
    "/api/v1/devices": ("device", "id"),
    "/api/v1/users": ("user", "username"),
}
"""Creates whose request names the object: a refused one (the id is taken) still says
which object it was about."""


def reads_request(path: str) -> bool:
    """Whether the audit reads this request's (small JSON) body."""
    return path.rstrip("/") in REQUESTED


def object_of(path: str, params: Mapping[str, str], answer: Any, asked: Any = None) -> str:
    """``kind:id`` for the object of an action, or the path when nothing names one."""
    named = [f"{KINDS.get(k, k)}:{v}" for k, v in sorted(params.items())]
    if named:
        return ",".join(named)
    for table, source in ((CREATED, answer), (REQUESTED, asked)):
        found = table.get(path.rstrip("/"))
        if found and isinstance(source, dict):
            kind, *keys = found
            for key in keys:
                if isinstance(source.get(key), str | int) and source[key] != "":
                    return f"{kind}:{source[key]}"
    return path


def reason_of(answer: Any) -> str | None:
    """A refusal's reason: the problem's ``detail`` (and the first field error)."""
    if not isinstance(answer, dict):
        return None
    detail = answer.get("detail")
    if not isinstance(detail, str):
        return None
    errors = answer.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        if first.get("field") and first.get("message"):
            detail = f"{detail}: {first['field']}: {first['message']}"
    return detail[:500]
