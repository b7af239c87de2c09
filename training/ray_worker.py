"""The thin adapter between Ray Train and ``training.loop.train``.

The only Ray-specific lines of a worker: read the rank and device from Ray Train's context, turn
``report`` into ``ray.train.report`` (with rank 0's checkpoint), ask Ray Train whether a node is
being preempted, fetch the checkpoint to resume from. Everything else is the plain loop.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

from training.config import TrainConfig
from training.context import NullTracker, WorkerContext
from training.loop import train
from training.data.transforms import jpeg_decoder
from training.environment import environment_tags


def train_func(config: dict) -> None:
    cfg = TrainConfig.from_dict(config)  # first line: the plain dict back into the config

    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ray_ctx = ray.train.get_context()
    rank = ray_ctx.get_world_rank()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def preempted() -> bool:
        # Ray Train's drain watcher: the same answer on every rank (it is a barrier).
        return ray.train.get_preemption_info() is not None

    restore_dir = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restore_dir = tempfile.mkdtemp(prefix="depthlab-restore-")
        checkpoint.to_directory(restore_dir)

    tracker = NullTracker()
    if rank == 0 and cfg.mlflow_run_id:
        from training.metrics_sink import MlflowSink

        tracker = MlflowSink(cfg.mlflow_run_id, system_metrics=cfg.system_metrics)
        # Which JPEG decoder the workers really have (a missing native build only costs speed,
        # so nothing else would show it).
        tracker.set_tag("depthlab.jpeg_decoder", jpeg_decoder())
        for key, value in environment_tags(ray.train.torch.get_device()).items():
            tracker.set_tag(key, value)
    ctx = WorkerContext(rank=rank, world_size=ray_ctx.get_world_size(),
                        device=ray.train.torch.get_device(), report=report,
                        restore_dir=restore_dir, tracker=tracker, preempted=preempted)
    try:
        train(cfg, ctx)
    finally:
        tracker.close()
        if restore_dir:
            shutil.rmtree(restore_dir, ignore_errors=True)
