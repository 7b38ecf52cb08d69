#!/usr/bin/env bash
# The agent's TFLite runtime tests on the legacy interpreter: tflite-runtime under numpy<2,
# as found on older boards (see docs/operations.md).  Builds .venv-legacy once (numpy<2,
# tflite-runtime, pydantic, pytest; the repo on PYTHONPATH, not installed) and runs
# tests/test_runtime.py with EDGEFLEET_TFLITE_BACKEND=tflite_runtime, so every TFLite
# package must either predict accurately or be refused by its self-test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3.11 || command -v python3)}
VENV=${LEGACY_VENV:-.venv-legacy}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "numpy<2" "tflite-runtime>=2.14" "pydantic>=2.7,<3" \
    "pytest>=8" "pytest-timeout>=2.3"
fi
"$VENV/bin/python" - <<'PY'
import numpy
from importlib.metadata import version
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: tflite-runtime needs numpy<2"
print(f"legacy venv: numpy {numpy.__version__}, tflite-runtime {version('tflite-runtime')}")
PY
# --noconftest: the shared fixtures start brokers and servers this venv does not carry.
EDGEFLEET_TFLITE_BACKEND=tflite_runtime PYTHONPATH="$PWD" \
  "$VENV/bin/python" -m pytest tests/test_runtime.py --noconftest -p no:cacheprovider -q "$@"
