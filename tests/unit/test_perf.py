"""What bounds a run: the loop's timings and the verdict drawn from them."""

from __future__ import annotations

import time

import pytest

from training.config import TrainConfig
from training.context import NullTracker, WorkerContext
from training.loop import train
from training.perf import advice, bound_by, loader_processes_needed, window_metrics


def test_window_metrics_and_the_verdict_drawn_from_them():
    m = window_metrics(window_s=2.0, wait_s=1.0, steps=10, batch_images=64, produced=640,
                       producing_s=1.6)
    assert m["perf/data_wait_fraction"] == 0.5 and m["perf/step_time_ms"] == 100.0
    assert m["perf/loader_images_per_sec_per_process"] == 400.0
    assert m["perf/compute_images_per_sec"] == 640.0
    assert [bound_by(f) for f in (0.05, 0.1, 0.2, 0.3, 0.9, None)] == [
        "compute", "compute", "mixed", "input", "input", "-"]
    assert loader_processes_needed(2500.0, 700.0) == 4
    text = advice(0.6, 2500.0, 700.0, loader_workers=1)
    assert text.startswith("input-bound: the step takes 2,500 images/s per worker, one loader "
                           "process makes 700: give each worker 3 more loader processes "
                           "(train.loader_workers=4)")
    assert advice(0.05, 2500.0, 700.0, 1) == ""


class Recorder(NullTracker):
    def __init__(self):
        self.points = []

    def log_metrics(self, metrics, step):
        self.points.append(dict(metrics))


def waits(points) -> list[float]:
    return [p["perf/data_wait_fraction"] for p in points if "perf/data_wait_fraction" in p]


def run(shards, **kw) -> list[dict]:
    rec = Recorder()
    cfg = TrainConfig(**{**dict(arch="residual", depth=8, data_url=shards, image_size=16,
                                epochs=1, global_batch_size=16, log_every_steps=2,
                                layer_responses="off"), **kw})
    train(cfg, WorkerContext(tracker=rec))
    return rec.points


def test_a_run_with_a_slow_loader_is_input_bound_and_a_plain_one_is_not(shards, monkeypatch):
    from training.data import loader as loader_module

    plain = run(shards, depth=20)
    build = loader_module.build_transform

    def slow(*args, **kwargs):
        transform = build(*args, **kwargs)

        def decode(data):
            time.sleep(0.01)  # a loader ten times slower than the step
            return transform(data)
        return decode

    monkeypatch.setattr(loader_module, "build_transform", slow)
    starved = run(shards, depth=8)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    assert bound_by(median(waits(starved))) == "input", waits(starved)
    assert bound_by(median(waits(plain))) in ("compute", "mixed"), waits(plain)
    assert median(waits(plain)) < median(waits(starved)) / 2
    rates = [p["perf/loader_images_per_sec_per_process"] for p in starved
             if "perf/loader_images_per_sec_per_process" in p]
    assert rates and max(rates) < 110  # 10 ms a sample: at most 100 samples a second
    assert all(p["perf/step_time_ms"] > 0 for p in plain if "perf/step_time_ms" in p)


@pytest.mark.parametrize("fraction,verdict", [(0.0, "compute"), (0.31, "input"), (0.15, "mixed")])
def test_the_thresholds_are_the_ones_documented(fraction, verdict):
    assert bound_by(fraction) == verdict
