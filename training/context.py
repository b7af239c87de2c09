"""Where a worker runs: its rank, its device, and how it reports and restores.

The training loop sees only this small object, so it runs the same in a plain single process
(rank 0 of 1: a GPU box, a test) and under Ray Train (see ``training.ray_worker``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

log = logging.getLogger("depthlab")


class NullTracker:
    """Metrics sink of every rank but 0, and of runs without MLflow: does nothing."""

    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def log_model(self, model, example) -> None:
        pass

    def log_json(self, data: dict, artifact_file: str) -> None:
        pass

    def flush(self, timeout_s: float = 10.0) -> list:
        return []

    def requeue(self, points) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # report(metrics, checkpoint_dir | None): every rank calls it the same number of times.
    report: Callable[[dict, str | None], None] | None = None
    # The directory of the checkpoint to resume from, or None for a fresh start.
    restore_dir: str | None = None
    tracker: object = field(default_factory=NullTracker)
    # preempted() -> True once a node of this run is being drained (a spot reclaim): the loop
    # then writes a just-in-time checkpoint. Every rank calls it the same number of times
    # (under Ray Train it is a collective); None: never preempted (a plain process).
    preempted: Callable[[], bool] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def print0(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)


class LocalCheckpoints:
    """``report`` for a single process: keeps the newest checkpoint in a local folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.reports: list[dict] = []

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            # Copy beside, then swap: "latest" is never half written.
            partial, target = self.folder / "latest.partial", self.folder / "latest"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(checkpoint_dir, partial)
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)

    def latest(self) -> str | None:
        target = self.folder / "latest"
        return str(target) if target.exists() else None
