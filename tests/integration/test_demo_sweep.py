"""The main job end to end on the embedded stack, started on free loopback ports.

Real services throughout: moto's S3 server over HTTP, the MLflow tracking server, a Ray head
node with token authentication. The stack is started by the same script `make up` runs and
stopped by process id; the test checks that nothing it started is left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from localstack import (REPO, STACK, clean_env, run, running_stack, stack_module,
                        wait_for_checkpoint)

EXPERIMENT = "it-demo"
REDUCED = ["--set", f"experiment={EXPERIMENT}", "--set", "grid.depth=[8]", "--set", "train.epochs=2"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started


@pytest.fixture(scope="module")
def mlflow_client(stack):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack[1]["env"]["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def sweep(stack):
    state, _ = stack
    result = run([sys.executable, "pipelines/compare_depths.py", *REDUCED, "--sweep-id", "it-1"],
                 clean_env(state), 900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def runs_of(client, sweep_id, role):
    exp = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`depthlab.sweep_id` = '{sweep_id}' and tags.`depthlab.role` = '{role}'"))


def wait_for_first_epoch(client, sweep_id: str, proc, info: dict, timeout: float = 420) -> None:
    """Until the sweep's one training run has ended an epoch and its checkpoint is stored."""
    deadline = time.monotonic() + timeout
    while True:
        runs = runs_of(client, sweep_id, "train")
        if runs and runs[0].data.metrics.get("epoch", 0) >= 1:
            break
        assert proc.poll() is None, "the sweep ended before its first epoch did"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(1)
    wait_for_checkpoint(info, f"{sweep_id}-{runs[0].data.params['run_name']}", proc)


def test_status_names_every_service(stack):
    state, info = stack
    out = run([*STACK, "status"], clean_env(state), 60)
    assert out.returncode == 0, out.stdout
    for name in ("S3 server", "MLflow UI", "Ray dashboard"):
        assert name in out.stdout
    assert info["urls"]["mlflow"] in out.stdout and "DOWN" not in out.stdout


def test_sweep_leaves_the_mlflow_record_of_the_contract(sweep, mlflow_client):
    (parent,) = runs_of(mlflow_client, "it-1", "sweep")
    assert parent.info.status == "FINISHED"
    children = runs_of(mlflow_client, "it-1", "train")
    assert sorted(c.data.params["arch"] for c in children) == ["plain", "preact", "residual"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("arch", "depth", "dataset", "shortcut", "global_batch_size", "num_workers"):
            assert key in child.data.params
        assert child.data.params["num_workers"] == "2" and child.data.params["shortcut"] == "A"
        assert child.data.params["model_params"] == "75290"  # CIFAR net of depth 8, 10 classes
        # The native decoder (where it is built) is found from a job's working_dir copy, which
        # leaves built files out.
        from training.data.transforms import jpeg_decoder

        assert child.data.tags["depthlab.jpeg_decoder"] == jpeg_decoder(), child.data.tags
        import torch

        from training.environment import cpu_model

        # what the run's numbers depend on beyond config, seed and data
        assert child.data.tags["depthlab.env.torch"] == torch.__version__
        assert child.data.tags["depthlab.env.cpu"] == cpu_model()
        assert child.data.tags["depthlab.env.device"] == "cpu"
        assert child.data.tags["depthlab.env.threads"] == "1"  # Ray's one CPU per worker
        for key in ("train/loss", "train/error_top1", "val/error_top1", "val/error_top5", "lr",
                    "throughput/images_per_sec", "responses/mean_std"):
            assert key in child.data.metrics, key
        # [P1] Fig. 7's layer responses, measured in the final evaluation.
        (responses,) = mlflow_client.list_artifacts(child.info.run_id, "responses")
        assert responses.path == "responses/layer_responses-step00000062.json"
        loss = [m.value for m in mlflow_client.get_metric_history(child.info.run_id, "train/loss")]
        assert len(loss) >= 6 and loss[-1] < loss[0], loss
        val = mlflow_client.get_metric_history(child.info.run_id, "val/error_top1")
        # Steps are global iterations: 4,000 samples / 2 workers / 64 per worker = 31 per epoch.
        assert [m.step for m in val] == [31, 62]
    artifacts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {"report/comparison.md", "report/training_curves.png", "report/summary.json",
                         "report/layer_responses.png"}
    assert "| plain | 8 | 0.08M | 1 |" in sweep.stdout and "residual vs plain at depth 8" in sweep.stdout
    assert "(one seed: observations, not verdicts)" in sweep.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium package is not installed")
def test_mlflow_ui_shows_the_runs_and_their_metrics(sweep, stack, mlflow_client, tmp_path):
    children = runs_of(mlflow_client, "it-1", "train")
    exp = mlflow_client.get_experiment_by_name(EXPERIMENT).experiment_id
    ids = quote(json.dumps([c.info.run_id for c in children]))
    url = f"{stack[1]['urls']['mlflow']}/#/compare-runs?runs={ids}&experiments={quote(json.dumps([exp]))}"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
         "--window-size=1500,1100", "--dump-dom", url],
        capture_output=True, text=True, timeout=120).stdout
    # The metrics table renders its first rows only (alphabetical: data/..., epoch, lr, ...);
    # the plot above it is drawn over train/loss.
    for name in ("plain-8-s0", "residual-8-s0", "preact-8-s0", "train/loss", "epoch", "lr"):
        assert name in dom, name


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium package is not installed")
def test_the_experiment_link_the_job_prints_opens_on_its_runs_not_a_genai_overview(
        sweep, stack, mlflow_client, tmp_path):
    """What a newcomer sees first on opening the experiment: its training runs, the sweep's
    run among them, and not MLflow 3's GenAI overview (traces, token usage)."""
    import re

    exp = mlflow_client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (url,) = re.findall(r"^MLflow: (\S+) ", sweep.stdout, re.M)
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
         "--window-size=1500,1100", "--dump-dom", url],
        capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)))
    assert "sweep-it-1" in text, text[:2000]
    assert "Token Usage" not in text and "Tool calls" not in text, text[:2000]


def test_report_is_rebuilt_from_mlflow_alone(sweep, stack, tmp_path):
    out = run([sys.executable, "pipelines/report.py", "--sweep-id", "it-1", "--experiment",
               EXPERIMENT, "--out", str(tmp_path), "--no-log"], clean_env(stack[0]), 120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| residual | 8 | 0.08M | 1 |" in out.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"comparison.md", "training_curves.png",
                                                    "summary.json", "layer_responses.png"}
    missing = run([sys.executable, "pipelines/report.py", "--sweep-id", "nope", "--experiment",
                   EXPERIMENT], clean_env(stack[0]), 120)
    assert missing.returncode == 2 and "no sweep 'nope'" in missing.stderr


def test_each_net_trains_at_the_learning_rate_its_tuning_runs_chose(sweep, stack, mlflow_client):
    tune = ["--set", "grid.arch=[residual]", "--set", "train.epochs=1", "--set",
            "tune={lr: [0.02, 0.2], split: holdout, seeds: [100]}", "--sweep-id", "it-tune"]
    result = run([sys.executable, "pipelines/compare_depths.py", *REDUCED, *tune],
                 clean_env(stack[0]), 900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    tuned = runs_of(mlflow_client, "it-tune", "tune")
    assert sorted(r.data.params["lr"] for r in tuned) == ["0.02", "0.2"]
    assert {r.data.params["eval_split"] for r in tuned} == {"holdout"}
    best = min(tuned, key=lambda r: r.data.metrics["val/error_top1"]).data.params["lr"]
    (child,) = runs_of(mlflow_client, "it-tune", "train")
    assert child.data.params["lr"] == best and child.data.params["eval_split"] == "val"
    (parent,) = runs_of(mlflow_client, "it-tune", "sweep")
    assert parent.data.params["tune.lr.residual-8"] == best
    assert "## Learning rates, tuned per net" in result.stdout
    again = run([sys.executable, "pipelines/compare_depths.py", *REDUCED, *tune],
                clean_env(stack[0]), 600)  # the choice is made again from the record
    assert again.returncode == 0 and "(2 finished earlier)" in again.stdout, again.stdout[-3000:]


def test_resubmitting_the_sweep_skips_finished_runs(sweep, stack, mlflow_client):
    again = run([sys.executable, "pipelines/compare_depths.py", *REDUCED, "--sweep-id", "it-1"],
                clean_env(stack[0]), 300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished in an earlier submission, skipped") == 3
    assert len(runs_of(mlflow_client, "it-1", "train")) == 3
    # Other training settings under the same id: refused before anything starts, each named.
    changed = run([sys.executable, "pipelines/compare_depths.py", *REDUCED, "--sweep-id", "it-1",
                   "--set", "train.lr=0.5", "--set", "train.log_every_steps=7"],
                  clean_env(stack[0]), 300)
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert "train.lr: 0.1 -> 0.5 (plain-8-s0, preact-8-s0, residual-8-s0)" in changed.stderr
    assert "log_every_steps" not in changed.stderr  # logging cadence does not change results


def test_ray_job_submit_runs_the_main_job(sweep, stack, mlflow_client, monkeypatch):
    job = run([*STACK, "submit", "--", "python", "pipelines/compare_depths.py", *REDUCED,
               "--set", "grid.arch=[residual]", "--set", "train.epochs=1",
               "--set", "train.log_model=true", "--sweep-id", "it-job"],
              clean_env(stack[0]), 600)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    (child,) = runs_of(mlflow_client, "it-job", "train")
    assert child.info.status == "FINISHED" and "val/error_top1" in child.data.metrics
    # The final model with its signature, the dataset as the run's input, system metrics.
    import mlflow

    # Through the environment, not mlflow.set_tracking_uri: that global would outlive this test
    # and point later tests' clients at this stack's server after it is stopped.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack[1]["env"]["MLFLOW_TRACKING_URI"])
    info = mlflow.models.get_model_info(f"runs:/{child.info.run_id}/model")
    assert info.signature is not None and info.flavors.get("pytorch")
    assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["synthetic-shapes"]
    assert any(k.startswith("system/") for k in child.data.metrics)


def test_a_killed_driver_resumes_its_unfinished_run(sweep, stack, mlflow_client):
    """Kill the driver after the first epoch; the same sweep id finishes the run from its
    checkpoint, in the same MLflow run, with the step counter continuing."""
    state = stack[0]
    args = [sys.executable, "pipelines/compare_depths.py", "--set", f"experiment={EXPERIMENT}",
            "--set", "grid.arch=[residual]", "--set", "grid.depth=[8]", "--set", "train.epochs=3",
            "--sweep-id", "it-kill"]
    proc = subprocess.Popen(args, env=clean_env(state), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_first_epoch(mlflow_client, "it-kill", proc, stack[1])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    again = run(args, clean_env(state), 600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed at step" in again.stdout + again.stderr
    (child,) = runs_of(mlflow_client, "it-kill", "train")  # the same run, not a second one
    assert child.info.status == "FINISHED"
    val_steps = [m.step for m in mlflow_client.get_metric_history(child.info.run_id, "val/error_top1")]
    assert set(val_steps) == {31, 62, 93} and val_steps[-1] == 93


def test_a_stopped_job_exits_cleanly_and_marks_its_sweep_killed(sweep, stack, mlflow_client):
    """`ray job stop` sends the driver SIGTERM: one line saying what happened and how to go on,
    no traceback, the sweep's record KILLED rather than left running."""
    state = stack[0]
    args = [sys.executable, "pipelines/compare_depths.py", *REDUCED, "--set", "grid.arch=[residual]",
            "--sweep-id", "it-stop"]
    proc = subprocess.Popen(args, env=clean_env(state), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not runs_of(mlflow_client, "it-stop", "train"):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "stopped by SIGTERM" in err and "--sweep-id it-stop" in err and "Traceback" not in err
    (parent,) = runs_of(mlflow_client, "it-stop", "sweep")
    (child,) = runs_of(mlflow_client, "it-stop", "train")
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"


def test_a_restarted_s3_server_gets_its_bucket_and_data_back(stack, sweep):
    state, info = stack
    stack_mod = stack_module()
    stack_mod.stop_group(info["pids"]["s3"])
    assert not stack_mod.s3_healthy(info)
    up = run([*STACK, "up"], clean_env(state), 300)
    assert up.returncode == 0, up.stdout + up.stderr
    dry = run([sys.executable, "pipelines/compare_depths.py", "--dry-run"], clean_env(state), 120)
    assert dry.returncode == 0 and "data present" in dry.stdout, dry.stdout + dry.stderr


def test_a_killed_training_worker_restarts_from_its_checkpoint(sweep, stack, mlflow_client):
    """SIGKILL one of a run's two Ray Train workers after its first epoch: Ray Train restarts
    the worker group from the last checkpoint (FailureConfig), the MLflow run continues with
    no gap in its steps and no second run, and the result is that of the unfaulted run."""
    state, info = stack
    args = [sys.executable, "pipelines/compare_depths.py", *REDUCED, "--set", "grid.arch=[residual]",
            "--sweep-id", "it-worker"]
    proc = subprocess.Popen(args, env=clean_env(state), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    stack_mod = stack_module()
    try:
        wait_for_first_epoch(mlflow_client, "it-worker", proc, info)
        workers = [p for p in stack_mod.ray_processes(info["ray_temp_dir"], info["ports"]["ray_gcs"])
                   if "RayTrainWorker" in stack_mod.cmdline(p)]
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    (child,) = runs_of(mlflow_client, "it-worker", "train")  # the same run, not a second one
    assert child.info.status == "FINISHED"
    train_steps = {m.step for m in mlflow_client.get_metric_history(child.info.run_id, "train/loss")}
    assert set(range(5, 62, 5)) <= train_steps and max(train_steps) == 62  # no gap, to the end
    val = mlflow_client.get_metric_history(child.info.run_id, "val/error_top1")
    assert sorted({m.step for m in val}) == [31, 62]
    # The same config, seed and data order as it-1's residual-8, which no fault touched.
    (clean,) = [c for c in runs_of(mlflow_client, "it-1", "train") if c.data.params["arch"] == "residual"]
    assert abs(child.data.metrics["val/error_top1"] - clean.data.metrics["val/error_top1"]) < 3.0
