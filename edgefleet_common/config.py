"""Configuration loading shared by both daemons: a TOML file plus environment overrides.

Each side declares its settings as a :class:`FileSettings` subclass with its own
``env_prefix``.  Precedence is explicit arguments > environment > file > defaults.
Every failure becomes a :class:`~edgefleet_contract.errors.ConfigError` whose
message names the offending field, the reason, and the environment variable that
would set it, so a daemon can print it and exit non-zero without a traceback.

The loader is our own rather than pydantic-settings: that package (and the asyncio it
imports) cost the idle agent ~9 MiB of RSS for what is a few dozen lines here.  It reads
the variables as pydantic-settings did: names are case-insensitive, ``__`` nests
(``PREFIX_SPOOL__MAX_BYTES``), and a section, list or dict is JSON
(``PREFIX_BROKER__ENDPOINTS='["a:1883"]'``), merged key by key with the nested variables.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet_contract.errors import ConfigError

NESTING = "__"
"""Separates a section from its field in an environment variable's name."""


class FileSettings(BaseModel):
    """Settings read from an optional TOML file with ``PREFIX_FIELD__SUB`` overrides.

    Constructing one reads the environment (as a ``pydantic_settings.BaseSettings``
    did), so ``AgentSettings(data_dir=...)`` still honours ``EDGE_AGENT_*``.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)
    env_prefix: ClassVar[str] = ""
    _source_file: ClassVar[Path | None] = None

    def __init__(self, **values: Any) -> None:
        cls = type(self)
        merged = _file_values(cls, cls._source_file) if cls._source_file else {}
        merged = _merge(merged, environment_values(cls, os.environ))
        super().__init__(**_merge(merged, values))


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, dicts merged key by key (later wins)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _file_values(cls: type[BaseModel], source: Path) -> dict[str, Any]:
    """The TOML file's table; top-level keys match field names case-insensitively."""
    fields = {name.lower(): name for name in cls.model_fields}
    data = tomllib.loads(source.read_text())
    return {fields.get(key.lower(), key): value for key, value in data.items()}


def _model(annotation: Any) -> type[BaseModel] | None:
    """The settings section ``annotation`` names (``X`` or ``X | None``), if any."""
    for sub in (annotation, *get_args(annotation)):
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            return sub
    return None


def _is_json(annotation: Any) -> bool:
    """Whether an environment value for ``annotation`` is JSON: a section, list or dict."""
    origin = get_origin(annotation)
    return (
        _model(annotation) is not None
        or list in (annotation, origin)
        or dict in (annotation, origin)
    )


def _child(annotation: Any, key: str) -> tuple[Any, bool]:
    """The type ``key`` sets inside ``annotation`` and whether it is a declared field.

    A dict's values are its value type (not a field: a value that is not JSON stays a
    string); a key no section declares is ``None``, left for validation to refuse.
    """
    if get_origin(annotation) is dict or annotation is dict:
        args = get_args(annotation)
        return (args[-1] if args else None), False
    model = _model(annotation)
    if model is not None:
        for name, info in model.model_fields.items():
            if name.lower() == key:
                return info.annotation, True
    return None, False


def environment_values(cls: type[FileSettings], environ: Mapping[str, str]) -> dict[str, Any]:
    """The values ``PREFIX_*`` variables in ``environ`` give ``cls``'s fields, unvalidated."""
    prefix = cls.env_prefix.lower()
    env = {key.lower(): (key, value) for key, value in environ.items()}
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        key = prefix + name.lower()
        if not _is_json(info.annotation):
            if key in env:
                out[name] = env[key][1]
            continue
        nested = _nested(info.annotation, key + NESTING, env)
        if key in env:
            value = _decode(*env[key])
            out[name] = _merge(value, nested) if isinstance(value, dict) else value
        elif nested:
            out[name] = nested
    return out


def _nested(annotation: Any, prefix: str, env: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """What the ``{prefix}A__B`` variables set inside a section, as nested dicts."""
    out: dict[str, Any] = {}
    for lowered, (name, value) in env.items():
        if not lowered.startswith(prefix):
            continue
        *path, last = lowered[len(prefix) :].split(NESTING)
        node: Any = out
        target, field = annotation, True
        for key in path:
            target, field = _child(target, key)
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # a shorter variable already set this path to a plain value
        target, field = _child(target, last)
        decoded: Any = value
        if value and target is not None and _is_json(target):
            try:
                decoded = json.loads(value)
            except ValueError:
                if field:
                    decoded = _decode(name, value)
        node[last] = decoded
    return out


def _decode(name: str, value: str) -> Any:
    """``value`` of variable ``name`` as JSON, or a :class:`ConfigError` saying it is not."""
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {name} is not valid JSON ({exc}): sections, lists and"
            ' dicts are written as JSON, e.g. ["a", "b"]'
        ) from None


S = TypeVar("S", bound=FileSettings)


def load_settings(cls: type[S], path: Path | str | None = None, **overrides: Any) -> S:
    """Build ``cls`` from ``path`` (if given), the environment and ``overrides``."""
    source: Path | None = None
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise ConfigError(f"configuration file {source} does not exist")
        try:
            tomllib.loads(source.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from None
    bound = type(cls.__name__, (cls,), {"_source_file": source, "__module__": cls.__module__})
    try:
        return bound(**overrides)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, source)) from None


def load_cli_settings(cls: type[S], config: Path | None, data_dir: Path | None) -> S:
    """``cls`` as a daemon command's ``--config`` and ``--data-dir`` ask for.

    ``--data-dir`` wins over the file and the environment when it is given.
    A misspelled ``PREFIX_*`` variable would be ignored silently; each gets a
    warning on stderr (a misspelled TOML key is refused, but an environment holds
    other programs' variables too, so it cannot be).
    """
    for warning in unknown_environment(cls, os.environ):
        sys.stderr.write(f"warning: {warning}\n")
    overrides = {"data_dir": data_dir} if data_dir else {}
    return load_settings(cls, config, **overrides)


def env_names(cls: type[BaseModel], prefix: str) -> list[str]:
    """Every environment variable that sets a field of ``cls`` (nested with ``__``)."""
    names: list[str] = []
    for name, info in cls.model_fields.items():
        env = prefix + name.upper()
        names.append(env)
        for sub in (info.annotation, *get_args(info.annotation)):  # X, or X | None
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                names += env_names(sub, env + "__")
    return names


def unknown_environment(cls: type[FileSettings], environ: Mapping[str, str]) -> list[str]:
    """One message per ``PREFIX_*`` variable in ``environ`` that sets nothing."""
    prefix = cls.env_prefix.upper()
    if not prefix:
        return []
    known = env_names(cls, prefix)
    out = []
    for key in sorted(environ):
        if not key.upper().startswith(prefix) or key.upper() in known:
            continue
        close = difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        out.append(f"{key} is not a setting and is ignored{hint}")
    return out


def describe(exc: ValidationError, cls: type[FileSettings], source: Path | None) -> str:
    """Turn a validation error into lines that name each bad field and how to set it."""
    prefix = cls.env_prefix.upper()
    where = f" in {source}" if source else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc) or "(root)"
        env = prefix + "__".join(p.upper() for p in loc)
        reason = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            reason = "unknown setting (check the spelling)"
        got = err.get("input")
        shown = "" if err.get("type") in ("missing", "extra_forbidden") else f" (got {got!r})"
        lines.append(f"  {field}: {reason}{shown}; set it in the file or as {env}")
    return "\n".join(lines)
