"""Build one record from another that names the same fields.

The agent turns its settings sections into the policies its parts run on (``[updates]``
into :class:`~agent.updates.updater.UpdatePolicy`, ``[drift]`` into
:class:`~agent.drift_monitor.AlertPolicy`) and its counters into the messages telemetry
sends (a shadow window into ``ShadowStats``).  Each of those used to copy the shared
fields one by one, so a field added on both sides could be forgotten in the copy; here the
field names themselves say what carries over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The fields a dataclass or pydantic model declares, in their order."""
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return tuple(cls.model_fields)
    raise TypeError(f"{cls.__name__} is neither a dataclass nor a pydantic model")


def carried_over(target: type[T], source: object, **given: Any) -> T:
    """A ``target`` taking every field ``source`` also declares, then the ``given`` ones.

    Fields only ``target`` has keep their defaults (unless given); fields only
    ``source`` has are left behind.
    """
    shared = set(field_names(type(source))) - set(given)
    values = {name: getattr(source, name) for name in field_names(target) if name in shared}
    return target(**values, **given)
