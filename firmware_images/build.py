"""``python -m firmware_images.build``: make a firmware bundle (``.efbundle``).

Wraps an image file (``--image``) or the deterministic sample image of the
given version in a bundle whose manifest names the compatible hardware and
the install handler::

    python -m firmware_images.build --version 1.1.0 --hardware rpi4 --hardware rpi5

writes ``firmware_images/dist/edge-os-1.1.0.efbundle``.  ``SOURCE_DATE_EPOCH``
(or ``--created-at``) pins ``created_at`` so rebuilds are byte-identical.  The
bundle is not signed here: the fleet server signs it as a TUF target when it
is pushed (``fleetctl firmware push``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgefleet_contract.errors import EdgefleetError
from edgefleet_contract.firmware import MAX_BUNDLE_BYTES, bundle_filename, write_bundle

from .image import DEFAULT_SIZE, sample_image

DIST = Path(__file__).resolve().parent / "dist"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_images.build", description=__doc__)
    parser.add_argument("--name", default="edge-os")
    parser.add_argument("--version", required=True, help="semantic version, e.g. 1.1.0")
    parser.add_argument(
        "--hardware", action="append", required=True, help="compatible hardware id (repeat)"
    )
    parser.add_argument("--handler", default="ab-slot", help="install handler id on the device")
    parser.add_argument("--image", type=Path, help="image file (default: the sample image)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="sample image size")
    parser.add_argument("--notes", default="")
    parser.add_argument("--created-at", type=float)
    parser.add_argument("--out", type=Path, default=DIST, help="output directory")
    args = parser.parse_args(argv)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    created_at = (
        args.created_at if args.created_at is not None else (float(epoch) if epoch else None)
    )
    try:
        if args.image is not None:
            if args.image.stat().st_size > MAX_BUNDLE_BYTES:
                raise EdgefleetError(f"{args.image} is over the {MAX_BUNDLE_BYTES}-byte limit")
            image = args.image.read_bytes()
        else:
            image = sample_image(args.version, size=args.size)
        fields: dict[str, object] = {
            "name": args.name,
            "version": args.version,
            "hardware": args.hardware,
            "handler": args.handler,
            "notes": args.notes,
        }
        if created_at is not None:
            fields["created_at"] = created_at
        path = args.out / bundle_filename(args.name, args.version)
        bundle = write_bundle(path, fields, image)
    except (EdgefleetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({bundle.size} bytes, sha256 {bundle.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
