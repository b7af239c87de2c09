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


def wait_for_checkpoint(info: dict, train_run: str, proc=None, timeout: float = 300) -> str:
    """The directory name of the first checkpoint Ray Train registered for ``train_run``
    (``<sweep>-<run>``) in the stack's bucket, polled for: a fault injected after it lands on a
    run that can resume.

    Registered, not only uploaded: a new controller resumes from the checkpoint manager's
    snapshot, which Ray Train writes after the checkpoint's files, so a driver killed between
    the two starts over."""
    import time

    import boto3

    env = info["env"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    snapshot_key = f"ray-results/{train_run}/checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout
    while True:
        try:
            snapshot = json.loads(s3.get_object(Bucket="depthlab", Key=snapshot_key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            snapshot = {}
        latest = snapshot.get("latest_checkpoint_result") or {}
        if latest.get("checkpoint_dir_name"):
            return latest["checkpoint_dir_name"]
        assert proc is None or proc.poll() is None, f"{train_run} ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint of {train_run} within {timeout:.0f} s"
        time.sleep(0.5)
