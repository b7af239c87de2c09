"""The training loop in a plain single process: no Ray, no MLflow."""

import os
from pathlib import Path

import pytest
import torch

from training.config import TrainConfig
from training.context import LocalCheckpoints, NullTracker, WorkerContext
from training.loop import load_checkpoint, train


class Recorder(NullTracker):
    def __init__(self):
        self.points = []

    def log_metrics(self, metrics, step):
        self.points.append((step, dict(metrics)))


class Unreachable(NullTracker):
    """A tracking server that takes nothing: every point logged stays undelivered."""

    def __init__(self):
        self.queued, self.requeued = [], []

    def log_metrics(self, metrics, step):
        self.queued += [(k, float(v), 0, step) for k, v in metrics.items()]

    def flush(self, timeout_s=10.0):
        return list(self.queued)

    def requeue(self, points):
        self.requeued += points


def config(shards, **kw):
    base = dict(arch="residual", depth=8, data_url=shards, image_size=16, epochs=4,
                global_batch_size=16, lr=0.05, log_every_steps=5, lr_milestones=(0.75,))
    return TrainConfig(**{**base, **kw})


def test_loss_goes_down_and_metrics_are_named_as_the_contract(shards):
    torch.manual_seed(0)
    rec = Recorder()
    train(config(shards), WorkerContext(tracker=rec))
    keys = set().union(*(m.keys() for _, m in rec.points))
    assert {"train/loss", "train/error_top1", "val/error_top1", "val/error_top5", "lr",
            "throughput/images_per_sec"} <= keys
    losses = [m["train/loss"] for _, m in rec.points if "train/loss" in m]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    steps = [s for s, _ in rec.points]
    assert steps == sorted(steps) and steps[-1] == 4 * 10  # 160 samples / 16 = 10 steps an epoch


def test_resume_matches_an_uninterrupted_run(shards, tmp_path):
    straight = LocalCheckpoints(tmp_path / "a")
    train(config(shards), WorkerContext(report=straight))

    first = LocalCheckpoints(tmp_path / "b")
    with pytest.raises(_Stopped):
        train(config(shards), WorkerContext(report=_StopAfter(first, 2)))
    state = load_checkpoint(first.latest())
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (2, 0, 20)
    resumed = LocalCheckpoints(tmp_path / "c")
    rec = Recorder()
    train(config(shards), WorkerContext(report=resumed, restore_dir=first.latest(), tracker=rec))
    assert rec.points[0][0] > 20  # the step counter continues
    a = load_checkpoint(straight.latest())["model"]
    b = load_checkpoint(resumed.latest())["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_points_the_server_had_not_taken_travel_with_the_checkpoint(shards, tmp_path):
    """A worker that dies after a checkpoint loses nothing it logged before it: the resumed
    run never trains those steps again, so the checkpoint carries the undelivered points."""
    saved, down = LocalCheckpoints(tmp_path / "a"), Unreachable()
    with pytest.raises(_Stopped):
        train(config(shards), WorkerContext(report=_StopAfter(saved, 2), tracker=down))
    carried = load_checkpoint(saved.latest())["undelivered_metrics"]
    assert [tuple(p) for p in carried] == down.queued  # all of them, up to the checkpoint
    assert [step for key, _, _, step in carried if key == "val/error_top1"] == [10, 20]

    back = Recorder()
    back.requeue = lambda points: back.points.extend(("requeued", p) for p in points)
    train(config(shards), WorkerContext(report=LocalCheckpoints(tmp_path / "b"),
                                        restore_dir=saved.latest(), tracker=back))
    assert [p for tag, p in back.points if tag == "requeued"] == carried


class _StopAfter:
    """A report that stops the run after n epochs, as a preempted worker would."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, metrics, checkpoint_dir):
        self.inner(metrics, checkpoint_dir)
        self.calls += 1
        if self.calls == self.n:
            raise _Stopped


class _Stopped(Exception):
    pass


def test_ten_crop_evaluation_counts_each_image_once(shards):
    from training.data import read_manifest
    from training.loop import evaluate
    from training.models import build_model

    torch.manual_seed(0)
    model = build_model("residual", 8, dataset="cifar", num_classes=4)
    manifest = read_manifest(shards, "val")
    one = evaluate(model, config(shards, augment="imagenet"), WorkerContext(), manifest)
    ten = evaluate(model, config(shards, augment="imagenet", eval_crops=10), WorkerContext(), manifest)
    # Ten crops of an image are one prediction (their softmax averaged), not ten samples.
    assert one["count"] == ten["count"] == manifest.num_samples == 52


def test_resume_mid_epoch_matches_an_uninterrupted_run(shards, tmp_path):
    cfg = config(shards, epochs=3, checkpoint_every_steps=5)
    straight = LocalCheckpoints(tmp_path / "a")
    train(cfg, WorkerContext(report=straight))
    first = LocalCheckpoints(tmp_path / "b")
    with pytest.raises(_Stopped):
        # Reports at steps 5 (mid-epoch), 10 (epoch end), 15 (mid-epoch): stop there.
        train(cfg, WorkerContext(report=_StopAfter(first, 3)))
    state = load_checkpoint(first.latest())
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 5, 15)
    resumed = LocalCheckpoints(tmp_path / "c")
    rec = Recorder()
    train(cfg, WorkerContext(report=resumed, restore_dir=first.latest(), tracker=rec))
    assert [s for s, m in rec.points if "train/loss" in m][0] == 20  # no step logged twice
    a = load_checkpoint(straight.latest())["model"]
    b = load_checkpoint(resumed.latest())["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_max_steps_stops_mid_epoch_and_evaluates(shards):
    rec = Recorder()
    final = train(config(shards, epochs=99, max_steps=13), WorkerContext(tracker=rec))
    assert max(s for s, _ in rec.points) == 13 and "val/error_top1" in final


def test_bn_parameters_can_skip_weight_decay():
    from training.loop import parameter_groups
    from training.models import build_model

    groups = parameter_groups(build_model("residual", 8, dataset="cifar"), 1e-4, True)
    assert groups[1]["weight_decay"] == 0 and all(p.ndim == 1 for p in groups[1]["params"])
    assert all(p.ndim > 1 for p in groups[0]["params"])


class _Payload:
    """What a tampered checkpoint could carry: unpickling it would run code."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["DEPTHLAB_PWNED"]),))


def test_a_tampered_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    from training.loop import CHECKPOINT_FILE

    marker = tmp_path / "pwned"
    monkeypatch.setenv("DEPTHLAB_PWNED", str(marker))
    torch.save({"model": {}, "evil": _Payload()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(str(tmp_path))
    assert not marker.exists()


def test_a_preemption_notice_writes_one_just_in_time_checkpoint(shards, tmp_path):
    """The notice arrives at step 6 of a 10-step epoch: the loop saves right there, so a restart
    (tested for any mid-epoch checkpoint above) resumes at step 6, not at the epoch's start."""
    notices = []

    def preempted():
        notices.append(len(notices))
        return len(notices) >= 3  # asked at steps 2, 4, 6: the third says yes

    cfg = config(shards, epochs=2, log_every_steps=2)
    saved = LocalCheckpoints(tmp_path / "jit")
    rec = Recorder()
    with pytest.raises(_Stopped):
        train(cfg, WorkerContext(report=_StopAfter(saved, 1), preempted=preempted, tracker=rec))
    state = load_checkpoint(saved.latest())
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 6, 6)
    assert [s for s, m in rec.points if "checkpoint/preemption_step" in m] == [6]
    assert len(notices) == 3  # one notice, one checkpoint: no more questions after it


def test_a_resumed_run_refuses_a_checkpoint_made_with_other_settings(shards, tmp_path):
    from training.config import config_changes

    first = LocalCheckpoints(tmp_path / "a")
    train(config(shards, epochs=1), WorkerContext(report=first))
    # Logging and checkpoint cadence may change; the learning rate may not.
    quieter = config(shards, epochs=2, log_every_steps=3)
    assert [k for k, _, _ in config_changes(config(shards, epochs=1).to_dict(), quieter.to_dict())] == ["epochs"]
    with pytest.raises(ValueError, match=r"lr: 0.05 there, 0.5 here"):
        train(config(shards, epochs=1, lr=0.5), WorkerContext(restore_dir=first.latest()))
