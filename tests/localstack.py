"""The local stack for integration tests: started by the script `make up` runs, on free
loopback ports, in a temp state folder; stopped by process id, and checked to leave nothing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK = [sys.executable, str(REPO / "infra" / "local" / "stack.py")]
SERVICE_VARS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE",
                "DEPTHLAB_AUTOSCALER_CONFIG")


def clean_env(state: Path) -> dict:
    """The environment of a user who set no service variable, with the stack running."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["DEPTHLAB_STATE_DIR"] = str(state)
    return env


def run(cmd, env, timeout):
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def stack_module():
    sys.path.insert(0, str(REPO / "infra" / "local"))
    import stack

    return stack


@contextlib.contextmanager
def running_stack(state: Path, *options: str):
    """``(state folder, stack.json)`` of a stack started with ``options``; stopped on exit,
    and an assertion error if any process it started outlives ``down``."""
    env = clean_env(state)
    up = run([*STACK, "up", "--ports", "auto", "--num-cpus", "2", *options], env, 420)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield state, json.loads((state / "stack.json").read_text())
    finally:
        info = json.loads((state / "stack.json").read_text())  # pids change on restarts
        down = run([*STACK, "down"], env, 120)
        assert down.returncode == 0, down.stdout + down.stderr
        mod = stack_module()
        leftover = mod.ray_processes(info["ray_temp_dir"], info["ports"]["ray_gcs"])
        leftover += [p for p in info["pids"].values() if mod.pid_alive(p)]
        assert not leftover, f"processes left running after down: {leftover}"
