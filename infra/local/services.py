"""Starting the local services and waiting for them: the one place that knows how.

The embedded stack (infra/local/stack.py), the tests and the benchmarks start moto's S3 server
and MLflow's tracking server through these helpers: each service runs in its own process group
on a loopback port, its output goes to a log file, and a start waits for its health endpoint
(quoting the log's last lines when it does not come up).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def bin_path(name: str) -> str:
    """An executable of this Python's environment (the venv), falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0, headers: dict | None = None) -> bool:
    """Whether a server answers at ``url`` (any status below 500: 401/403/404 mean it is up)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=timeout) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


def wait_for(check, what: str, timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll ``check`` until it holds; a clear error with the log's tail when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = ""
    if log and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"{what} did not become healthy within {timeout:.0f}s"
                       + (f"; last lines of {log}:\n{tail}" if tail else ""))


def spawn(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    """Start a service in its own process group (so it can be stopped with its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=REPO_ROOT)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a service started by ``spawn`` and everything in its process group."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_moto(port: int, log: Path, env: dict | None = None,
               timeout: float = 60) -> subprocess.Popen:
    """moto's server (S3, EC2, IAM, STS, SSM on one port) on 127.0.0.1:``port``."""
    proc = spawn([bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(port)], log,
                 dict(os.environ if env is None else env))
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/"), "S3 server (moto)",
                 timeout, proc, log)
    except RuntimeError:
        stop(proc)
        raise
    return proc


def mlflow_server_command(port: int, backend_store_uri: str, *options: str,
                          host: str = "127.0.0.1") -> list[str]:
    return [bin_path("mlflow"), "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend_store_uri, *options]


def start_mlflow(cmd: list[str], port: int, log: Path, env: dict | None = None,
                 timeout: float = 180) -> subprocess.Popen:
    """An MLflow server started with ``cmd``, once its /health answers on ``port``.

    The GenAI job runner (huey consumers) costs seven processes and a core at start and
    depthlab does not use it, so it is off unless ``env`` says otherwise. On 2 cores the
    first start (database migrations) takes up to a minute.
    """
    env = dict(os.environ if env is None else env)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = spawn(cmd, log, env)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "MLflow server", timeout,
                 proc, log)
    except RuntimeError:
        stop(proc)
        raise
    return proc
