"""What model packages and firmware bundles share: a zip file read as hostile input.

Both formats arrive from uploads and over the air, so a reader trusts nothing in
the file: its size is checked before it is read, the declared member sizes
before anything is inflated, and the inflated bytes are counted again (a header
can lie).  Member names are flat, so nothing can point outside the archive;
encrypted members, other compression methods and duplicate names are refused.
The manifest is a closed schema whose format version is checked first, so an old
reader asks for an upgrade instead of listing fields it does not know.

Writers give every member the same timestamp (the same content makes the same
bytes) and replace the file atomically.  Every refusal is a :class:`PackageError`.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, StringConstraints, ValidationError

from .errors import PackageError

MANIFEST_NAME = "manifest.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
"""Every member gets this timestamp, so the same content always makes the same bytes."""
MEMBER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_MEMBER_RE = re.compile(MEMBER_PATTERN)

MemberName = Annotated[str, StringConstraints(pattern=MEMBER_PATTERN)]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class ArchiveKind:
    """How messages name the format: ``noun`` in limits, ``title`` where the file is named."""

    noun: str
    title: str


def read_verified(
    path: Path, parse: Callable[[bytes], T], *, max_bytes: int, kind: ArchiveKind
) -> T:
    """``parse`` applied to the bytes of ``path``, which is refused unread when too large.

    A refusal from ``parse`` is prefixed with the path, so a message names the file.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise PackageError(
                f"{path}: {size} bytes is over the {max_bytes}-byte {kind.noun} limit"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read {kind.title} {path}: {exc.strerror or exc}") from exc
    try:
        return parse(data)
    except PackageError as exc:
        raise PackageError(f"{path}: {exc}") from exc


def open_zip(data: bytes, *, max_bytes: int, kind: ArchiveKind) -> zipfile.ZipFile:
    """``data`` opened as a zip file, after its size is checked against ``max_bytes``."""
    if len(data) > max_bytes:
        raise PackageError(f"{len(data)} bytes is over the {max_bytes}-byte {kind.noun} limit")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise PackageError(f"not a {kind.title} (not a zip file: {exc})") from exc


def unpack(
    archive: zipfile.ZipFile, *, max_bytes: int, limits: Mapping[str, int]
) -> dict[str, bytes]:
    """Every member's bytes by name, all of them together at most ``max_bytes``.

    Every header is checked before the first member is inflated: a name, a
    method, a declared size over the total or over its own entry in ``limits``
    refuses the whole archive while it is still cheap to.  Each member is then
    read to at most one byte past its declared size, so a header that lies is
    caught without inflating what it hides.  The caller bounds the member count
    (``archive.infolist()``) first, since each format has its own rule.
    """
    infos = archive.infolist()
    total = 0
    for info in infos:
        if not _MEMBER_RE.fullmatch(info.filename):
            raise PackageError(
                f"member name {info.filename[:80]!r} is not allowed: names are flat "
                "(no directories) and use A-Z, a-z, 0-9, '_', '.', '-'"
            )
        if info.flag_bits & 0x1:
            raise PackageError(f"member {info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PackageError(f"member {info.filename} uses an unsupported compression method")
        limit = limits.get(info.filename)
        if limit is not None and info.file_size > limit:
            raise PackageError(f"{info.filename} is over the {limit}-byte limit")
        total += info.file_size
        if total > max_bytes:
            raise PackageError(f"the members unpack to more than the {max_bytes}-byte limit")
    members: dict[str, bytes] = {}
    for info in infos:
        if info.filename in members:
            raise PackageError(f"member {info.filename} appears twice")
        try:
            with archive.open(info) as stream:
                # Never trust the header alone: read at most one byte past it.
                content = stream.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
            raise PackageError(f"member {info.filename} is corrupt: {exc}") from exc
        if len(content) != info.file_size:
            raise PackageError(f"member {info.filename} does not match its declared size")
        members[info.filename] = content
    return members


def load_manifest(
    raw: bytes, schema: type[M], *, format_version: int | tuple[int, ...], kind: ArchiveKind
) -> M:
    """``raw`` validated as ``schema``, refused first if it is of a format version not read."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    known = format_version if isinstance(format_version, tuple) else (format_version,)
    if isinstance(doc, dict) and doc.get("format") not in known:
        raise PackageError(
            f"{MANIFEST_NAME} has format {doc.get('format')!r}; this version reads format "
            f"{' and '.join(map(str, known))} (upgrade the agent or rebuild the {kind.noun})"
        )
    try:
        return schema.model_validate(doc)
    except ValidationError as exc:
        raise PackageError(f"{MANIFEST_NAME} is invalid: {first_error(exc)}") from exc


def first_error(exc: ValidationError) -> str:
    """The first validation error as ``field.path: message``, with a count of the others."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "manifest"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def write_atomically(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` through a temp file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PackageError(f"cannot write {path}: {exc.strerror or exc}") from exc
