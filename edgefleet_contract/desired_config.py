"""The settings a desired state may set on a device (``twin set --config KEY=VALUE``).

One schema for both ends: the server checks a desired config against it before
storing and sending it, so a misspelled key or a value of the wrong type is
refused at once with the reason, instead of being accepted and then ignored (or
refused) by the device later.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ContractError


class DesiredConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    telemetry_interval_s: Annotated[float, Field(ge=0.05, le=3600)] | None = None
    """Seconds between telemetry batches (the agent's ``telemetry_interval_s``)."""


KNOWN_KEYS = tuple(DesiredConfig.model_fields)


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse keys the agent does not know and values of the wrong type or range."""
    try:
        DesiredConfig.model_validate(dict(config))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first.get("loc", ())) or "config"
        if first.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ContractError(
                f"config key {key!r} is not a device setting{hint} "
                f"(settings: {', '.join(KNOWN_KEYS)})"
            ) from None
        raise ContractError(
            f"config {key}={first.get('input')!r}: {first.get('msg', 'invalid')}"
        ) from None
