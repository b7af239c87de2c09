"""The local stack as a secured, autoscaling cluster: `stack.py up --autoscale --mlflow-auth`.

Autoscaling on one machine: the head has no ``gpu_slot``; Ray's fake_multinode autoscaler
(infra/local/fake_autoscaler.yaml) may add two one-slot worker nodes, which are real raylets on
this machine. A sweep whose runs each need a slot makes it add nodes; the runs finish on them;
the nodes go after the idle timeout; a sweep that needs more slots than the autoscaler can ever
add is refused before anything starts.

Security: MLflow in basic-auth mode (drivers and workers log with the credentials the head's
environment holds; a client without them, or with wrong ones, gets one clear message), Ray
token authentication, and no credential in anything the sweep leaves behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
import time

import pytest

from localstack import REPO, clean_env, run, running_stack, stack_module, wait_for_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SWEEP = [sys.executable, "pipelines/compare_depths.py", "--config", "configs/autoscale_demo.yaml",
         "--set", "experiment=it-autoscale"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("cluster"), "--autoscale", "--mlflow-auth") as (
            state, info):
        yield state, info, stack_module()


def worker_nodes(stack) -> int:
    _, info, stack_mod = stack
    return sum(1 for n in stack_mod.ray_nodes(info) if not n.get("is_head_node"))


def test_a_run_the_cluster_can_never_hold_is_refused_at_once(stack):
    state, _, _ = stack
    t0 = time.monotonic()
    out = run([*SWEEP, "--set", "cluster.workers_per_run=4"], clean_env(state), 180)
    assert out.returncode != 0
    assert "4 gpu_slot (the cluster can grow to at most 2)" in out.stdout + out.stderr
    assert time.monotonic() - t0 < 120 and worker_nodes(stack) == 0


@pytest.fixture(scope="module")
def sweep(stack):
    """The autoscaling sweep, with the node count watched while it runs."""
    state, _, _ = stack
    assert worker_nodes(stack) == 0
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            try:
                seen.append(worker_nodes(stack))
            except OSError:
                pass
            done.wait(2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = run([*SWEEP, "--sweep-id", "it-as-1"], clean_env(state), 600)
    finally:
        done.set()
        watcher.join()
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out, seen


def test_the_autoscaler_adds_nodes_for_queued_runs_and_removes_them_when_idle(stack, sweep):
    out, seen = sweep
    assert "2 done, 0 failed" in out.stdout
    assert max(seen) == 2, seen  # one node per queued one-slot run, up to the type's max
    # idle_timeout_minutes 0.25: the nodes go about 15 s after the runs release them.
    deadline = time.monotonic() + 120
    while worker_nodes(stack) and time.monotonic() < deadline:
        time.sleep(2)
    assert worker_nodes(stack) == 0


def test_mlflow_basic_auth_takes_the_runs_and_refuses_strangers(stack, sweep):
    state, info, _ = stack
    env = info["env"]
    assert env["MLFLOW_TRACKING_USERNAME"] and env["MLFLOW_TRACKING_PASSWORD"]
    # The workers logged through the login the head's environment gave them.
    with mlflow_login(env) as client:
        exp = client.get_experiment_by_name("it-autoscale")
        runs = client.search_runs([exp.experiment_id], "tags.`depthlab.sweep_id` = 'it-as-1' "
                                  "and tags.`depthlab.role` = 'train'")
        assert len(runs) == 2 and all("val/error_top1" in r.data.metrics for r in runs)
    dry = [sys.executable, "pipelines/compare_depths.py", "--config", "configs/autoscale_demo.yaml",
           "--dry-run"]
    nobody = dict(clean_env(state), MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_PASSWORD="")
    out = run(dry, nobody, 120)
    assert out.returncode == 1 and "asks for a login: set MLFLOW_TRACKING_USERNAME" in out.stderr
    wrong = dict(clean_env(state), MLFLOW_TRACKING_PASSWORD="not-the-password")
    out = run(dry, wrong, 120)
    assert out.returncode == 1 and "rejected the login of user 'depthlab'" in out.stderr
    assert "not-the-password" not in out.stdout + out.stderr


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@contextlib.contextmanager
def mlflow_login(env: dict):
    """An MLflow client logged in as the stack's drivers and workers are."""
    from mlflow.tracking import MlflowClient

    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    os.environ.update({k: env[k] for k in keys})
    try:
        yield MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    finally:
        for k in keys:
            os.environ.pop(k, None)


@contextlib.contextmanager
def sweep_in_background(stack, sweep_id: str, *overrides: str):
    """``(driver process, client, child)`` of the autoscale demo sweep started with
    ``overrides``; ``child()`` is its one MLflow training run, or None before it exists."""
    state, info, _ = stack
    proc = subprocess.Popen([*SWEEP, *overrides, "--sweep-id", sweep_id], env=clean_env(state),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        with mlflow_login(info["env"]) as client:
            def child():
                exp = client.get_experiment_by_name("it-autoscale")
                runs = client.search_runs([exp.experiment_id], f"tags.`depthlab.sweep_id` = '{sweep_id}' "
                                          "and tags.`depthlab.role` = 'train'")
                return runs[0] if len(runs) == 1 else None

            yield proc, client, child
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_run(proc, child, ready, what: str, timeout: float = 420):
    """Poll until ``ready(run)`` holds for the sweep's training run; fail if the driver ends."""
    deadline = time.monotonic() + timeout
    while not ((run_ := child()) and ready(run_)):
        assert proc.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return run_


# Epochs of the demo data take ~2 s here: the runs below are long enough that the fault lands
# mid-run (a 3-epoch run once finished before its node was killed, and a test without the
# "resumed" check passed without a restart), and each test checks that the run did resume.
FAULT_EPOCHS = 12


def test_a_lost_node_is_replaced_and_its_run_resumes(stack, sweep):
    """Kill the raylet of the node a run trains on (the node is lost, with its worker): Ray
    Train restarts the run from its checkpoint once the autoscaler has brought up a new node,
    in the same MLflow run, and it finishes."""
    _, info, stack_mod = stack
    with sweep_in_background(stack, "it-node", "--set", "grid.arch=[residual]",
                             "--set", f"train.epochs={FAULT_EPOCHS}") as (proc, client, child):
        run_ = wait_for_run(proc, child, lambda r: r.data.metrics.get("epoch", 0) >= 1, "an epoch ended")
        wait_for_checkpoint(info, f"it-node-{run_.data.params['run_name']}", proc)
        (worker,) = [p for p in stack_mod.ray_processes(info["ray_temp_dir"], info["ports"]["ray_gcs"])
                     if "RayTrainWorker" in stack_mod.cmdline(p)]
        raylet = _parent(worker)
        assert "raylet" in stack_mod.cmdline(raylet)
        os.kill(raylet, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
        assert "resumed at step" in out, out[-4000:]  # the node went while the run trained
        run_ = child()  # the same run, not a second one
        assert run_.info.status == "FINISHED"
        val = client.get_metric_history(run_.info.run_id, "val/error_top1")
        assert sorted({m.step for m in val}) == list(range(31, 31 * FAULT_EPOCHS + 1, 31))


def _train_worker_node(info) -> str:
    """The node id of the (one) live Ray Train worker, from the dashboard's state API."""
    import json
    import urllib.request

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    query = ("/api/v0/actors?limit=1000&filter_keys=class_name&filter_predicates=%3D"
             "&filter_values=RayTrainWorker")
    req = urllib.request.Request(info["urls"]["ray_dashboard"] + query,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        actors = json.load(resp)["data"]["result"]["result"]
    (actor,) = [a for a in actors if a["state"] == "ALIVE"]
    return actor["node_id"]


def test_a_preemption_notice_makes_a_just_in_time_checkpoint(stack, sweep):
    """Drain the node a run trains on as a spot reclaim would (Ray's drain API, reason
    PREEMPTION, a deadline): Ray Train tells the workers, the loop writes a just-in-time
    checkpoint at once (recorded in MLflow), and after the deadline the run restarts on a new
    node and finishes in the same MLflow run."""
    state, info, _ = stack
    epochs = FAULT_EPOCHS + 4  # the notice takes ~5 s to arrive, the deadline 15 s more
    with sweep_in_background(stack, "it-preempt", "--set", "grid.arch=[plain]",
                             "--set", f"train.epochs={epochs}") as (proc, client, child):
        wait_for_run(proc, child, lambda r: "train/loss" in r.data.metrics, "training started")
        drain = run([str(Path(sys.executable).parent / "ray"), "drain-node",
                     "--address", info["env"]["RAY_ADDRESS"], "--node-id", _train_worker_node(info),
                     "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                     "--reason-message", "spot reclaim (test)", "--deadline-remaining-seconds", "15"],
                    dict(clean_env(state), RAY_AUTH_MODE="token"), 60)
        assert drain.returncode == 0, drain.stdout + drain.stderr
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
        run_ = child()  # the same run, not a second one
        assert run_.info.status == "FINISHED"
        jit = client.get_metric_history(run_.info.run_id, "checkpoint/preemption_step")
        assert jit and jit[0].value % 5 == 0, (jit, out[-4000:])  # the first log step after it
        assert "just-in-time checkpoint" in out
        assert "resumed at step" in out, out[-4000:]  # the node went at the deadline, mid-run
        val = client.get_metric_history(run_.info.run_id, "val/error_top1")
        assert sorted({m.step for m in val}) == list(range(31, 31 * epochs + 1, 31))


def test_no_credential_appears_in_what_the_sweep_leaves(stack, sweep, tmp_path):
    """The MLflow password and server key, the S3 secret key and the Ray token: not in MLflow
    (params, tags, artifacts), not in the driver's output, not in any log of the stack or Ray."""
    state, info, _ = stack
    env = info["env"]
    secrets = {"MLflow password": env["MLFLOW_TRACKING_PASSWORD"],
               "MLflow server key": info["mlflow_secret_key"],
               "S3 secret key": env["AWS_SECRET_ACCESS_KEY"],
               "Ray token": (Path.home() / ".ray" / "auth_token").read_text().strip()}
    texts = {"driver output": sweep[0].stdout + sweep[0].stderr}
    os.environ["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"]  # as a driver of the stack has it
    try:
        with mlflow_login(env) as client:
            exp = client.get_experiment_by_name("it-autoscale")
            for r in client.search_runs([exp.experiment_id]):
                texts[f"run {r.info.run_name} params and tags"] = repr(
                    (r.data.params, r.data.tags, sorted(r.data.metrics)))
                folder = client.download_artifacts(r.info.run_id, "", str(tmp_path / r.info.run_id))
                for f in Path(folder).rglob("*"):
                    if f.is_file():
                        texts[f"artifact {f.relative_to(tmp_path)}"] = f.read_bytes().decode(errors="replace")
    finally:
        os.environ.pop("AWS_ENDPOINT_URL")
    assert any(k.startswith("artifact ") for k in texts)  # the scan did read artifacts
    logs = [*(state / "logs").rglob("*"), *Path(info["ray_temp_dir"]).rglob("logs/**/*")]
    for f in logs:
        if f.is_file() and not f.is_symlink():
            texts[str(f)] = f.read_bytes().decode(errors="replace")
    assert len(texts) > 20
    leaks = [f"{what} in {where}" for where, text in texts.items()
             for what, secret in secrets.items() if secret in text]
    assert not leaks, leaks
