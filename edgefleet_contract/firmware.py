"""The firmware bundle: one zip file holding a firmware image and its manifest.

A bundle (``.efbundle``) is what ``fleetctl firmware push`` uploads, what the
server signs as a TUF target and what a device's install handler receives.  It
holds ``manifest.json`` and exactly one image file named by ``image.file``;
the manifest carries the image's SHA-256 and size, the hardware ids the image
runs on and the id of the install handler that knows how to write it.

Like model packages, bundles arrive from uploads and over the air, so reading
one assumes a hostile file: the file size is checked before it is opened, the
declared member sizes before anything is inflated (and the inflated bytes are
counted again, never trusting the header), member names are flat, there are
exactly two members, the manifest is a closed schema, and the image is hashed
against the manifest before anyone sees it (:mod:`~edgefleet_contract.safezip`
holds the zip-level checks both formats share).

The image is stored uncompressed (``ZIP_STORED``): firmware images are usually
compressed already, and a stored image keeps a small change in the image a
small change in the bundle, which is what makes binary deltas worth sending.
:func:`parse_bundle` is the I/O-free core; :func:`read_bundle` and
:func:`write_bundle` are the disk edges.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from . import safezip
from .errors import PackageError
from .messages import Sha256, Timestamp
from .package import PackageName, SemVer
from .safezip import MANIFEST_NAME as MANIFEST_NAME  # part of the format's public surface

FORMAT_VERSION: Literal[1] = 1
SUFFIX = ".efbundle"
DEFAULT_IMAGE_NAME = "image.bin"

MAX_BUNDLE_BYTES = 512 * 1024 * 1024
"""Default limit on the bundle file and on what its members unpack to."""
MAX_MANIFEST_BYTES = 64 * 1024
_KIND = safezip.ArchiveKind(noun="bundle", title="firmware bundle")

HardwareId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
HandlerId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ImageEntry(_Closed):
    file: safezip.MemberName
    sha256: Sha256
    size: Annotated[int, Field(ge=0)]


class FirmwareManifest(_Closed):
    format: Literal[1] = FORMAT_VERSION
    name: PackageName
    version: SemVer
    hardware: Annotated[list[HardwareId], Field(min_length=1, max_length=64)]
    """Hardware ids the image runs on; a device refuses a bundle that does not list its own."""
    handler: HandlerId = "ab-slot"
    """The install handler id on the device (``ab-slot`` is the reference implementation)."""
    image: ImageEntry
    created_at: Timestamp
    notes: Annotated[str, StringConstraints(max_length=4096)] = ""


@dataclass(frozen=True)
class FirmwareBundle:
    """A verified bundle in memory: the image matched the manifest's hash and size."""

    manifest: FirmwareManifest
    image: bytes = field(repr=False)
    sha256: str
    """SHA-256 of the whole bundle file (its identity, and its TUF target hash)."""
    size: int

    @property
    def filename(self) -> str:
        return bundle_filename(self.manifest.name, self.manifest.version)


def bundle_filename(name: str, version: str) -> str:
    """The conventional file name, which is also the last part of the TUF target path."""
    return f"{name}-{version}{SUFFIX}"


# ---------------------------------------------------------------- reading ----


def read_bundle(path: Path, *, max_bytes: int = MAX_BUNDLE_BYTES) -> FirmwareBundle:
    """Read and verify the bundle at ``path``; raise :class:`PackageError` if it is unfit."""
    parse = partial(parse_bundle, max_bytes=max_bytes)
    return safezip.read_verified(path, parse, max_bytes=max_bytes, kind=_KIND)


def parse_bundle(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> FirmwareBundle:
    """Verify a bundle held in memory (the same checks as :func:`read_bundle`)."""
    with safezip.open_zip(data, max_bytes=max_bytes, kind=_KIND) as zipped:
        count = len(zipped.infolist())
        if count != 2:
            raise PackageError(
                f"{count} members; a bundle holds exactly {MANIFEST_NAME} and one image"
            )
        members = safezip.unpack(
            zipped, max_bytes=max_bytes, limits={MANIFEST_NAME: MAX_MANIFEST_BYTES}
        )
    raw_manifest = members.pop(MANIFEST_NAME, None)
    if raw_manifest is None:
        raise PackageError(f"the bundle has no {MANIFEST_NAME}")
    manifest = _parse_manifest(raw_manifest)
    entry = manifest.image
    image = members.pop(entry.file, None)
    if image is None:
        raise PackageError(f"the image {entry.file} named in {MANIFEST_NAME} is missing")
    if members:
        raise PackageError(f"member {sorted(members)[0]} is not named in {MANIFEST_NAME}")
    if len(image) != entry.size:
        raise PackageError(f"{entry.file} has {len(image)} bytes, manifest says {entry.size}")
    if hashlib.sha256(image).hexdigest() != entry.sha256:
        raise PackageError(f"{entry.file} does not match its SHA-256 in {MANIFEST_NAME}")
    return FirmwareBundle(
        manifest=manifest, image=image, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )


def _parse_manifest(raw: bytes) -> FirmwareManifest:
    manifest = safezip.load_manifest(
        raw, FirmwareManifest, format_version=FORMAT_VERSION, kind=_KIND
    )
    if manifest.image.file == MANIFEST_NAME:
        raise PackageError(f"the image cannot be named {MANIFEST_NAME}")
    return manifest


# ---------------------------------------------------------------- writing ----


def pack_bundle(manifest_fields: Mapping[str, object], image: bytes) -> bytes:
    """The bundle bytes for ``image`` described by ``manifest_fields``.

    ``manifest_fields`` holds ``name``, ``version``, ``hardware`` and optionally
    ``handler``, ``notes``, ``created_at`` (default: now) and ``image_file``
    (the member name, default ``image.bin``); the image entry is computed.
    The same fields and image always give the same bytes.
    """
    fields = dict(manifest_fields)
    image_file = fields.pop("image_file", DEFAULT_IMAGE_NAME)
    fields.pop("image", None)
    fields.setdefault("created_at", time.time())
    fields["format"] = FORMAT_VERSION
    fields["image"] = {
        "file": image_file,
        "sha256": hashlib.sha256(image).hexdigest(),
        "size": len(image),
    }
    try:
        manifest = FirmwareManifest.model_validate(fields)
    except ValidationError as exc:
        raise PackageError(f"cannot write the bundle: {safezip.first_error(exc)}") from exc
    if manifest.image.file == MANIFEST_NAME:
        raise PackageError(f"the image cannot be named {MANIFEST_NAME}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        doc = manifest.model_dump_json(indent=1).encode()
        archive.writestr(
            zipfile.ZipInfo(MANIFEST_NAME, safezip.ZIP_EPOCH), doc, zipfile.ZIP_DEFLATED
        )
        archive.writestr(
            zipfile.ZipInfo(manifest.image.file, safezip.ZIP_EPOCH), image, zipfile.ZIP_STORED
        )
    return buffer.getvalue()


def write_bundle(path: Path, manifest_fields: Mapping[str, object], image: bytes) -> FirmwareBundle:
    """Write a bundle atomically (temp file + rename) and return it as read back."""
    data = pack_bundle(manifest_fields, image)
    bundle = parse_bundle(data, max_bytes=max(MAX_BUNDLE_BYTES, len(data)))
    safezip.write_atomically(path, data)
    return bundle
