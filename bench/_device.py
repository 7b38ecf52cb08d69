"""A real ``edge-agent run`` process for benchmarks, enrolled from the lab's CA."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from agent.identity import save_identity

from ._lab import Lab

BIN = Path(sys.executable).parent


def device_dir(lab: Lab, device_id: str) -> Path:
    """An enrolled device's data dir (key, certificate, CA, broker address)."""
    tls = lab.identity(device_id)
    assert tls.cert_file is not None and tls.key_file is not None
    data = lab.dir / "devices" / device_id
    save_identity(
        data,
        device_id=device_id,
        server_url="http://127.0.0.1:9",
        broker_host="127.0.0.1",
        broker_port=lab.broker.port,
        key_pem=tls.key_file.read_bytes(),
        cert_pem=tls.cert_file.read_bytes(),
        ca_pem=tls.ca_file.read_bytes(),
    )
    return data


def start_agent(data: Path, model: Path, **env: str) -> subprocess.Popen[bytes]:
    settings = {
        "EDGE_AGENT_MODEL": str(model),
        "EDGE_AGENT_LOCAL_API__PORT": "0",
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        **env,
    }
    log = (data / "agent.log").open("ab")
    return subprocess.Popen(
        [str(BIN / "edge-agent"), "run", "--data-dir", str(data)],
        env={**os.environ, **settings},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def spool_depth(data: Path) -> int:
    path = data / "spool.db"
    if not path.exists():
        return -1
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of ``/proc/PID/status``: resident in all (``VmRSS``) or a part of
    it (``RssAnon``: the process's own memory, unlike ``RssFile`` not shared with the
    page cache)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")
