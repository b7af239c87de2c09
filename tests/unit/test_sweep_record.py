"""What a driver that dies mid-sweep leaves in MLflow (a file-backed store, no server)."""

import os
import signal

import pytest

from orchestrator.mlflow_record import TAG_ROLE, TAG_RUN_KEY, TAG_SWEEP, SweepTracker
from orchestrator.sweep import close_record, signals_held


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return SweepTracker("record-test", "sw-1")


def _run(tracker, role, name, status=None):
    run = tracker.client.create_run(tracker.experiment_id, tags={
        TAG_SWEEP: tracker.sweep_id, TAG_ROLE: role, TAG_RUN_KEY: name})
    if status:
        tracker.client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def _status(tracker, run_id):
    return tracker.client.get_run(run_id).info.status


@pytest.mark.parametrize("killed, parent_status", [(True, "KILLED"), (False, "FAILED")])
def test_a_dead_driver_leaves_no_run_marked_running(tracker, killed, parent_status):
    parent = _run(tracker, "sweep", "sweep")
    running = [_run(tracker, "train", "residual-8-s0"), _run(tracker, "train", "residual-8-s1"),
               _run(tracker, "tune", "tune-residual-8-lr0.1")]
    done = _run(tracker, "train", "plain-8-s0", "FINISHED")
    failed = _run(tracker, "train", "plain-8-s1", "FAILED")
    other_sweep = tracker.client.create_run(tracker.experiment_id, tags={
        TAG_SWEEP: "sw-2", TAG_ROLE: "train", TAG_RUN_KEY: "residual-8-s0"}).info.run_id
    close_record(tracker, parent, killed=killed)
    assert [_status(tracker, r) for r in running] == ["KILLED"] * 3  # resumed when resubmitted
    assert (_status(tracker, done), _status(tracker, failed)) == ("FINISHED", "FAILED")
    assert _status(tracker, parent) == parent_status
    assert _status(tracker, other_sweep) == "RUNNING"


def test_a_signal_waits_until_the_record_is_written():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("SIGTERM"))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == ["SIGTERM"]
    finally:
        signal.signal(signal.SIGTERM, previous)
