"""Configuration loading shared by both daemons: a TOML file plus environment overrides.

Each side declares its settings as a :class:`FileSettings` subclass with its own
``env_prefix``.  Precedence is explicit arguments > environment > file > defaults.
Every failure becomes a :class:`~edgefleet_contract.errors.ConfigError` whose
message names the offending field, the reason, and the environment variable that
would set it, so a daemon can print it and exit non-zero without a traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edgefleet_contract.errors import ConfigError


class FileSettings(BaseSettings):
    """Settings read from an optional TOML file with ``PREFIX_FIELD__SUB`` overrides."""

    model_config = SettingsConfigDict(extra="forbid", env_nested_delimiter="__")
    _source_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._source_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._source_file))
        return tuple(sources)


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
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
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
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
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
