"""One worked example per fleetctl command, shown at the end of its ``--help``.

Kept in one table rather than in each docstring so every help page ends the same
way and a test can check that no command (including a new one) lacks an example.
"""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "login": "fleetctl login --server https://fleet.example:8080 -u admin",
    "logout": "fleetctl logout",
    "whoami": "fleetctl whoami -o yaml",
    "completion": "fleetctl completion bash > /etc/bash_completion.d/fleetctl",
    "devices list": "fleetctl devices list -s 'tag:site=berlin and online'",
    "devices add": "fleetctl devices add cam-017 --name 'Dock camera' --tag site=berlin",
    "devices token": "fleetctl devices token cam-017",
    "devices show": "fleetctl devices show cam-017 -o json",
    "devices tag": "fleetctl devices tag cam-017 site=hamburg shelf=",
    "devices groups": "fleetctl devices groups cam-017 canary night-shift",
    "devices revoke": "fleetctl devices revoke cam-017 --yes",
    "devices delete": "fleetctl devices delete cam-017 --yes",
    "twin show": "fleetctl twin show cam-017",
    "twin set": "fleetctl twin set cam-017 --model digits@1.3.0 --config telemetry_interval_s=30",
    "telemetry show": "fleetctl telemetry show cam-017 --since 6h",
    "telemetry aggregate": "fleetctl telemetry aggregate -s 'tag:site=berlin' --since 1h",
    "commands send": "fleetctl commands send cam-017 reboot --wait",
    "commands list": "fleetctl commands list cam-017",
    "users list": "fleetctl users list",
    "users add": "fleetctl users add ana --role operator",
    "users set": "fleetctl users set ana --role viewer",
    "tokens create": "fleetctl tokens create ci-deploy --ttl-days 30",
    "tokens list": "fleetctl tokens list",
    "tokens revoke": "fleetctl tokens revoke tok_3f9a",
    "audit": "fleetctl audit --action rollout.create --since 24h",
    "train start": (
        "fleetctl train start --model digits --target 'tag:site=berlin' --strategy fedprox --mu 0.1"
    ),
    "train list": "fleetctl train list --status running",
    "train status": "fleetctl train status run-7c2e --watch",
    "train stop": "fleetctl train stop run-7c2e",
    "models push": "fleetctl models push digits-1.3.0.efpkg",
    "models list": "fleetctl models list --name digits",
    "models pack": (
        "fleetctl models pack cnn.onnx --name cnn --version 1.0.0 --labels labels.txt "
        "--calibration samples/ --spec cnn.toml --quantize int8 --output cnn-1.0.0.efpkg"
    ),
    "models show": "fleetctl models show cnn@1.0.0:onnx-int8",
    "models card": "fleetctl models card digits@1.1.0 > card.md",
    "firmware push": "fleetctl firmware push rpi4-2.1.0.efbundle",
    "firmware list": "fleetctl firmware list",
    "keys init": "fleetctl keys init --out /media/usb/root-keys --keys 3 --threshold 2",
    "keys show": "fleetctl keys show",
    "keys rotate": "fleetctl keys rotate --role timestamp --out root-proposal.json",
    "keys sign-root": (
        "fleetctl keys sign-root root-proposal.json --key /media/usb/root-keys/root-key-1.pem "
        "--out root-v2.json"
    ),
    "keys install-root": "fleetctl keys install-root root-v2.json",
    "rollout create": (
        "fleetctl rollout create --artifact digits@1.3.0 --target all --canary 5% "
        "--waves 25%,100% --gate 'error_rate<0.01'"
    ),
    "rollout list": "fleetctl rollout list --status running",
    "rollout status": "fleetctl rollout status ro-41d2 --watch",
    "rollout pause": "fleetctl rollout pause ro-41d2",
    "rollout resume": "fleetctl rollout resume ro-41d2",
    "rollout abort": "fleetctl rollout abort ro-41d2",
    "rollout rollback": "fleetctl rollout rollback ro-41d2",
    "simulate": "fleetctl simulate --devices 200",
}
