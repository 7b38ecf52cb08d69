"""Device identifiers.

A device id is the CN of its client certificate and is substituted for ``%u``
in the broker's ACL, so it must never contain MQTT wildcards or separators.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
"""A validated device id, for use in pydantic models."""


def is_device_id(value: str) -> bool:
    return bool(_DEVICE_ID_RE.fullmatch(value))


def check_device_id(value: str) -> str:
    """Return ``value`` or raise ``ValueError`` with a message a person can act on."""
    if not is_device_id(value):
        raise ValueError(
            f"invalid device id {value!r}: use 1-64 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return value
