"""A device process for the kill -9 tests: resume, optionally start an update, print the result.

    python -m tests.ota_kill_child DATA_DIR SERVER_URL [--update VERSION] [--kill-at PHASE]
        [--probation S] [--max-restarts N]

``--kill-at`` makes the process SIGKILL itself the moment the journal enters
PHASE (``downloading`` waits until part of the file is on disk), which is the
power cut the parent test then recovers from.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from agent.serving import ModelService
from agent.updates import active_model_path
from agent.updates.firmware import ABSlotHandler
from agent.updates.health import HealthTally
from agent.updates.journal import Journal
from agent.updates.updater import UpdatePolicy, Updater
from edgefleet_contract.messages import TargetRef

from .ota_device_kit import model_ref


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("server")
    parser.add_argument("--update")
    parser.add_argument("--kill-at")
    parser.add_argument("--probation", type=float, default=0.5)
    parser.add_argument("--max-restarts", type=int, default=2)
    parser.add_argument("--firmware", help="update the A/B firmware to this version instead")
    args = parser.parse_args()
    service = ModelService(recorder=None)
    path = active_model_path(args.data_dir)
    assert path is not None, "no model to boot into"
    service.replace(path)
    booted = service.model.manifest.version if service.model else None

    def on_change(journal: Journal) -> None:
        if args.kill_at != journal.phase:
            return
        if journal.phase == "downloading":
            partial = args.data_dir / "updates" / f"{journal.sha256}.part"
            if not partial.exists() or partial.stat().st_size == 0:
                return
        os.kill(os.getpid(), signal.SIGKILL)

    updater = Updater(
        args.data_dir,
        args.server,
        host=service,
        health=HealthTally(),
        policy=UpdatePolicy(
            probation_s=args.probation, poll_s=0.02, max_restarts=args.max_restarts
        ),
        on_change=on_change,
        firmware=ABSlotHandler(args.data_dir / "firmware", initial_version="1.0.0"),
        hardware="rpi4",
    )
    final = updater.resume()
    if args.update:
        final = updater.run(model_ref(args.update), desired_version=2)
    if args.firmware:
        target = f"firmware/edge-os/{args.firmware}/edge-os-{args.firmware}.efbundle"
        ref = TargetRef(kind="firmware", name="edge-os", version=args.firmware, target=target)
        final = updater.run(ref, desired_version=3)
    serving = service.model.manifest.version if service.model else None
    print(
        json.dumps(
            {
                "booted": booted,
                "serving": serving,
                "phase": final.phase if final else None,
                "error": final.error if final else None,
                "restarts": final.restarts if final else 0,
                "firmware": updater.firmware.current_version() if updater.firmware else None,
            }
        )
    )


if __name__ == "__main__":
    main()
