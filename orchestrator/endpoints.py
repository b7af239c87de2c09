"""Where the services are: the standard variables first, the embedded local stack second.

Users point depthlab at a cluster with the variables every tool already reads
(``MLFLOW_TRACKING_URI``, ``AWS_ENDPOINT_URL``, the AWS credential variables, ``RAY_ADDRESS``).
When one is unset and the embedded stack (``make up``) is running, its value comes from the
stack's state file, so ``python pipelines/compare_depths.py`` works with no variable set.
Inside a ``ray job submit`` job the variables come from the head node's environment, which the
local stack sets when it starts Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "stack.json"

# Variables a worker needs to reach the services; none of them is a secret.
PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI",
                "MLFLOW_S3_ENDPOINT_URL")
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "SESSION", "KEY_ID")


def state_dir() -> Path:
    return Path(os.environ.get("DEPTHLAB_STATE_DIR") or REPO_ROOT / ".depthlab")


def read_stack_state(folder: Path | None = None) -> dict | None:
    path = (folder or state_dir()) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def apply_local_stack_defaults() -> list[str]:
    """Fill unset standard variables from the running local stack; return the names filled."""
    state = read_stack_state()
    if not state:
        return []
    filled = []
    for name, value in state.get("env", {}).items():
        if name not in os.environ:
            os.environ[name] = str(value)
            filled.append(name)
    return filled


def worker_env() -> dict[str, str]:
    """Endpoint variables to hand to Ray workers (credentials stay with the cluster's nodes)."""
    return {k: os.environ[k] for k in PASS_THROUGH if os.environ.get(k)}


def is_secret(name: str) -> bool:
    upper = name.upper()
    return any(m in upper for m in SECRET_MARKERS)
