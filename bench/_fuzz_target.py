"""One atheris (libFuzzer) run over one hostile-input reader: ``python -m bench._fuzz_target
TARGET CORPUS_DIR [libFuzzer flags]``.

Run by :mod:`bench.bench_fuzz` in a child process, because ``atheris.Fuzz()`` never
returns: libFuzzer exits when its run budget is spent or on the first crash.  A
"crash" is any exception other than the one refusal the reader documents
(``Rejected`` results for the codec, :class:`PackageError` for packages and bundles,
:class:`SelectorError` for selectors), or a hang.  The modules under test are
imported under atheris' instrumentation, so the fuzzer is coverage-guided.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from edgefleet_contract import codec, firmware, package, safezip
    from edgefleet_contract.errors import PackageError, SelectorError
    from fleet_server import selector
    from fleet_server.store.base import Device

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fleet_server" / "factory_models" / "digits-1.0.0-onnx-int8.efpkg"
BUNDLE = ROOT / "firmware_images" / "dist" / "edge-os-1.0.0.efbundle"
TOPICS = [f"devices/fz-1/{c}" for c in ("telemetry", "state", "status", "ack", "fl/out", "cmd")] + [
    "devices/../telemetry",
    "other/fz-1/telemetry",
]
_CODEC = codec.Codec(max_payload=64 * 1024)


def _rezip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, safezip.ZIP_EPOCH), data)
    return out.getvalue()


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def fuzz_codec(data: bytes) -> None:
    if not data:
        return
    result = _CODEC.decode(TOPICS[data[0] % len(TOPICS)], data[1:])
    assert isinstance(result, codec.Accepted | codec.Rejected)


def _archive_target(
    parse: Callable[[bytes], object], original: dict[str, bytes]
) -> Callable[[bytes], None]:
    """Whole archives half the time; otherwise the input is the manifest of a real archive
    (so the schema, the member checks and the hashes are reached, not only the zip CRC)."""

    def target(data: bytes) -> None:
        if not data:
            return
        raw = data[1:] if data[0] % 2 else _rezip({**original, "manifest.json": data[1:]})
        with contextlib.suppress(PackageError):
            parse(raw)

    return target


def fuzz_selector(data: bytes) -> None:
    try:
        chosen = selector.parse(data.decode("utf-8", errors="replace"))
    except SelectorError:
        return
    chosen.matches(_DEVICE)  # evaluating a parsed selector must not fail either


_DEVICE = Device(
    id="fz-1",
    name="fz-1",
    tags={"site": "berlin"},
    groups=("canary",),
    state="enrolled",
    created_at=0.0,
    online=True,
    model_name="digits",
    model_version="1.0.0",
    firmware_version="1.2.0",
    agent_version="0.9",
    hardware="rpi4",
    health="ok",
)


def seeds(name: str) -> list[bytes]:
    """A few valid inputs to start from."""
    if name == "codec":
        good = json.dumps(
            {"v": 1, "device_id": "fz-1", "batch_id": "b-1", "seq": 1, "ts": 1.0, "window_s": 1}
        ).encode()
        return [b"\x00" + good, b"\x01" + good, b"\x02" + b'{"v":1,"online":true}']
    if name in ("package", "bundle"):
        path = PACKAGE if name == "package" else BUNDLE
        return [b"\x01" + path.read_bytes(), b"\x00" + _members(path)["manifest.json"]]
    return [
        s.encode()
        for s in (
            "tag:site=berlin and model:digits<2.0 and online",
            "(group:canary or id:pump-*) and not health:degraded",
            "firmware:>=1.2.0 and hardware:rpi4",
            "model:digits@1.0.0 or agent:!=0.9",
        )
    ]


def main() -> None:
    name, corpus = sys.argv[1], Path(sys.argv[2])
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    targets: dict[str, Callable[[bytes], None]] = {
        "codec": fuzz_codec,
        "package": _archive_target(package.parse_package, _members(PACKAGE)),
        "bundle": _archive_target(firmware.parse_bundle, _members(BUNDLE)),
        "selector": fuzz_selector,
    }
    atheris.Setup([sys.argv[0], *sys.argv[3:], str(corpus)], targets[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
