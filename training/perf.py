"""What sets a run's pace: the input pipeline or the step. Pure functions of a logging
window's timings (the loop measures them; the report reads them back).

Per window the loop measures its wall time (ending at the log point, where the metrics'
all-reduce waits for the device, so a GPU's queued work is inside it), the time the training
thread spent waiting for its next batch, and the time loader processes spent making the
batches they delivered. On a GPU the host runs ahead of the device, so the waiting time is
the device's idle time at most: the data-wait fraction is an upper bound on what the input
pipeline costs.
"""

from __future__ import annotations

import math

# A run waiting on its data for at least this fraction of its time is input-bound; at most
# INPUT_NEGLIGIBLE, compute-bound; in between, both matter.
INPUT_BOUND, INPUT_NEGLIGIBLE = 0.30, 0.10


def window_metrics(*, window_s: float, wait_s: float, steps: int, batch_images: int,
                   produced: int, producing_s: float) -> dict[str, float]:
    """The ``perf/`` metrics of one logging window."""
    window_s = max(window_s, 1e-9)
    out = {"perf/data_wait_fraction": min(1.0, max(0.0, wait_s / window_s)),
           "perf/step_time_ms": 1000.0 * max(window_s - wait_s, 0.0) / max(steps, 1)}
    if produced and producing_s > 0:
        out["perf/loader_images_per_sec_per_process"] = produced / producing_s
    if steps:
        out["perf/compute_images_per_sec"] = batch_images * steps / max(window_s - wait_s, 1e-9)
    return out


def bound_by(wait_fraction: float | None) -> str:
    """"input", "compute" or "mixed" (thresholds above); "-" when unknown."""
    if wait_fraction is None:
        return "-"
    if wait_fraction >= INPUT_BOUND:
        return "input"
    return "compute" if wait_fraction <= INPUT_NEGLIGIBLE else "mixed"


def loader_processes_needed(compute_rate: float, per_process_rate: float) -> int:
    """Loader processes per training worker that keep up with the step, from the two rates."""
    return max(1, math.ceil(compute_rate / max(per_process_rate, 1e-9)))


def advice(wait_fraction: float | None, compute_rate: float | None,
           per_process_rate: float | None, loader_workers: int) -> str:
    """One sentence for an input-bound run: how many loader processes (and CPUs) per worker
    would keep the step busy; "" otherwise."""
    if bound_by(wait_fraction) != "input" or not compute_rate or not per_process_rate:
        return ""
    need = loader_processes_needed(compute_rate, per_process_rate)
    have = max(loader_workers, 1)
    more = max(need - have, 1)
    return (f"input-bound: the step takes {compute_rate:,.0f} images/s per worker, one loader "
            f"process makes {per_process_rate:,.0f}: give each worker {more} more loader "
            f"process{'es' * (more > 1)} (train.loader_workers={need}) and the CPUs to run them "
            f"(cluster.cpus_per_worker >= {need + 1})")
