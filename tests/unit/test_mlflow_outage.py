"""MLflow down for a while during training: the metrics sink buffers and delivers later.

A real tracking server (SQLite) on a free loopback port is stopped mid-run and started again
on the same port and database; nothing logged in between is lost, and logging never blocks the
training loop. A checkpoint's flush is bounded while the server is down and hands back the
undelivered points, which a resumed worker sends again without duplicating any. When the server never comes back, the loss is counted and reported.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port

from infra.local.services import mlflow_server_command, start_mlflow, stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def start_server(port: int, db: Path, log: Path) -> subprocess.Popen:
    return start_mlflow(mlflow_server_command(port, f"sqlite:///{db}", "--workers", "1"), port, log)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_metrics_logged_while_mlflow_is_down_arrive_when_it_is_back(tmp_path, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    from training.metrics_sink import MlflowSink

    port, db, log = free_port(), tmp_path / "mlflow.db", tmp_path / "mlflow.log"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    # MLflow's own HTTP retries would hide the outage inside one call for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = start_server(port, db, log)
    try:
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        sink = MlflowSink(run_id, flush_every_s=0.5)
        for step in range(10):
            sink.log_metrics({"train/loss": float(step)}, step)
        wait_until(lambda: sink.delivered == 10, 60, "the first points never arrived")

        stop(server)
        t0 = time.monotonic()
        for step in range(10, 30):  # the training loop goes on: logging only queues
            sink.log_metrics({"train/loss": float(step)}, step)
        assert time.monotonic() - t0 < 0.5
        wait_until(lambda: sink.failures >= 2, 60, "the sink never tried the stopped server")
        assert sink.delivered == 10

        # A checkpoint now: the flush waits a bounded time and hands back what is undelivered.
        t0 = time.monotonic()
        carried = sink.flush(timeout_s=2.0)
        assert time.monotonic() - t0 < 10
        assert sorted(step for _, _, _, step in carried) == list(range(10, 30))

        server = start_server(port, db, log)  # back, same port and database
        assert sink.flush(timeout_s=60) == []  # up: a checkpoint's flush delivers everything
        assert sink.delivered == 30
        assert sink.close() == 0
        steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
        assert sorted(steps) == list(range(30))  # nothing lost, nothing twice

        # The worker died after that checkpoint; its successor sends the carried points again.
        # Some had arrived after all: MLflow keeps one copy of a point sent twice.
        again = MlflowSink(run_id, flush_every_s=0.5)
        again.requeue(carried)
        assert again.flush(timeout_s=60) == [] and again.close() == 0
        steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
        assert sorted(steps) == list(range(30))

        # A server that never comes back: the loss is counted and said, not silent.
        late = MlflowSink(run_id, flush_every_s=0.5, close_timeout_s=2.0)
        stop(server)
        for step in range(30, 35):
            late.log_metrics({"train/loss": float(step)}, step)
        with caplog.at_level(logging.ERROR, logger="depthlab"):
            assert late.close() == 5
        assert f"could not deliver 5 metric points to MLflow run {run_id}" in caplog.text
    finally:
        if server.poll() is None:
            stop(server)
