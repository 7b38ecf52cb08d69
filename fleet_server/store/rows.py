"""Conversions between store rows and records (pure functions)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from edgefleet_contract.messages import DesiredState, DriftReport, ReportedState, Telemetry

from .base import Device

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")

Convert = Callable[[Any], Any]


def from_row(cls: type[R], row: Any, **read: Convert) -> R:
    """The record ``cls`` from a row that has a column for each of its fields, under the
    field's name: each value as stored, or through ``read[field]`` (JSON text, 0/1 flags).

    The record's fields say which columns a reader takes, so a table's reader names
    only the columns it converts instead of restating every field twice.
    """
    values = {name: row[name] for name in _field_names(cls)}
    for name, convert in read.items():
        values[name] = convert(values[name])
    return cls(**values)


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def to_row(record: DataclassInstance, columns: Sequence[str], **write: Convert) -> tuple[Any, ...]:
    """The values of ``columns`` (fields of ``record``, in that order) for an INSERT, each
    through ``write[column]`` where given (``json.dumps`` for a JSON column)."""
    out = []
    for name in columns:
        value = getattr(record, name)
        out.append(write[name](value) if name in write else value)
    return tuple(out)


def insert_sql(table: str, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...)``, one placeholder a column."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def json_or(empty: str) -> Convert:
    """Parse a JSON column, reading NULL (or an empty text) as ``empty``."""
    return lambda text: json.loads(text or empty)


def sorted_json(value: object) -> str:
    """A JSON column written with sorted keys (the same document, the same text)."""
    return json.dumps(value, sort_keys=True)


def text_or_empty(text: str | None) -> str:
    """A text column where NULL reads as the empty string."""
    return text or ""


def device_from_row(row: Any, *, full: bool = True) -> Device:
    """``full=False`` skips parsing the twin JSON (for filtering many devices)."""
    return from_row(
        Device,
        row,
        tags=json.loads,
        groups=_json_tuple,
        online=bool,
        cert_serial=_serial,
        reported=_reported if full else _none,
        desired=_desired if full else _none,
    )


def _json_tuple(text: str) -> tuple[Any, ...]:
    return tuple(json.loads(text))


def _serial(text: str | None) -> int | None:
    """Serials are stored as text: they outgrow a 64-bit integer column."""
    return int(text) if text else None


def _reported(text: str | None) -> ReportedState | None:
    return ReportedState.model_validate_json(text) if text else None


def _desired(text: str | None) -> DesiredState | None:
    return DesiredState.model_validate_json(text) if text else None


def _none(text: str | None) -> None:
    return None


def telemetry_row(batch: Telemetry, received_at: float) -> tuple[Any, ...]:
    return (
        batch.device_id,
        batch.batch_id,
        batch.seq,
        batch.ts,
        received_at,
        batch.model_dump_json(exclude_none=True),
    )


def rollup_values(batch: Telemetry) -> tuple[Any, ...]:
    """One batch's contribution to its device's per-minute rollup row."""
    inf, sysm, drift = batch.inference, batch.system, batch.drift
    lat = inf.latency if inf else None
    return (
        batch.device_id,
        float(int(batch.ts // 60) * 60),
        inf.count if inf else 0,
        inf.errors if inf else 0,
        lat.p95_ms if lat else 0.0,
        1 if lat else 0,
        lat.p99_ms if lat else 0.0,
        sysm.cpu_percent if sysm else 0.0,
        float(sysm.mem_used_bytes) if sysm else 0.0,
        float(sysm.rss_bytes) if sysm else 0.0,
        1 if sysm else 0,
        drift.score if drift else 0.0,
        inf.feedback_count if inf else 0,
        inf.feedback_correct if inf else 0,
        len(batch.readings),
        batch.spool.dropped_total,
    )


def drift_status_values(batch: Telemetry) -> dict[str, Any] | None:
    """A chi-squared drift report as a ``drift_status`` row (None for none or PSI)."""
    d, inf = batch.drift, batch.inference
    if not isinstance(d, DriftReport):
        return None
    return {
        "device_id": batch.device_id,
        "ts": batch.ts,
        "model": inf.model if inf else None,
        "version": inf.version if inf else None,
        "alert": int(d.alert),
        "reference_effect": d.reference.effect,
        "reference_p": d.reference.p_value,
        "baseline_effect": d.baseline.effect if d.baseline else None,
        "baseline_p": d.baseline.p_value if d.baseline else None,
        "burn_in_rows": d.burn_in.rows,
        "burn_in_needed": d.burn_in.needed,
    }
