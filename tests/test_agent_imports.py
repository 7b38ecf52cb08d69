"""What a serving agent keeps in memory: only what serving needs is imported.

An idle device's resident memory is mostly the modules it imported (see the idle-RSS
rows of docs/benchmarks.md): the update stack (httpx, python-tuf and the cryptography
its signers pull in) loads when the first update runs, the operator's terminal tools
(rich, PyYAML) and the packer's libraries (onnx, scipy, Pillow, scikit-learn) never.
Checked in a fresh interpreter that imports the daemon and serves a format-2 model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LATER = ("httpx", "tuf", "securesystemslib", "cryptography", "bsdiff4")
NEVER = ("rich", "yaml", "pygments", "onnx", "scipy", "PIL", "sklearn", "fastapi", "flwr")

SCENARIO = """
import json, sys
from pathlib import Path
import numpy as np
import agent.cli, agent.daemon
from agent.serving import ModelService
from agent.updates.machine import HealthCounters
from agent.updates.updater import Updater

service = ModelService(threads=1)
service.replace(Path(sys.argv[1]))
answer = service.infer(np.zeros((16, 16, 3), np.uint8))[0].results[0]["label"]
updater = Updater(
    Path(sys.argv[2]), "http://127.0.0.1:9", host=service,
    health=lambda: HealthCounters(inferences=0, errors=0),
)
serving = sorted(m for m in sys.argv[3].split(",") if m in sys.modules)
updater.trust  # what the first update reaches for
updating = sorted(m for m in sys.argv[3].split(",") if m in sys.modules)
print(json.dumps({"answer": answer, "serving": serving, "updating": updating}))
"""


def test_a_serving_agent_imports_no_update_stack_and_no_tools(tmp_path: Path) -> None:
    from fleet_server.modelkit.pack import pack

    from .thirdparty_kit import cnn_request

    _, package = pack(cnn_request(tmp_path, name="cnn", output=tmp_path / "cnn.efpkg"))
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(package), str(tmp_path), ",".join(LATER + NEVER)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answer"] in [f"digit-{i}" for i in range(10)]  # the kit's labels
    assert result["serving"] == []
    # Positive control: the update path does load its stack when it is used.
    assert {"httpx", "tuf"} <= set(result["updating"])
    # (httpx imports rich for its own command line when rich is installed, as here; a
    # device install has no rich: test_agent_install_trains checks that.)
    assert not {"onnx", "scipy", "PIL", "sklearn", "fastapi", "flwr"} & set(result["updating"])
