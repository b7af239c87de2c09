"""``train(config, context)``: the whole life of one run inside one worker.

Runs the same in a single process and under Ray Train; everything distributed goes through the
``WorkerContext``. Every rank executes the same number of steps, log points and reports, which
Ray Train V2 requires (``report`` is a barrier) and DDP requires (collectives must match).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from training.config import TrainConfig
from training.context import WorkerContext
from training.data import build_loader, read_manifest
from training.metrics import Accumulator
from training.models import build_model
from training.schedule import milestone_steps, step_lr
from training.transforms import normalize

CHECKPOINT_FILE = "checkpoint.pt"


def steps_per_epoch(num_samples: int, world_size: int, per_worker_batch: int) -> int:
    """Batches every rank runs per epoch (the loader drops the remainder; see training.data)."""
    steps = (num_samples // world_size) // per_worker_batch
    if steps < 1:
        raise ValueError(
            f"{num_samples} training samples are too few for {world_size} workers with "
            f"{per_worker_batch} samples each per step"
        )
    return steps


def save_checkpoint(folder: str, *, model, optimizer, cfg: TrainConfig, epoch: int, step: int,
                    batch_in_epoch: int) -> str:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "batch_in_epoch": batch_in_epoch,
        "config": cfg.to_dict(),
        "mlflow_run_id": cfg.mlflow_run_id,
        "torch_rng": torch.get_rng_state(),
    }
    path = os.path.join(folder, CHECKPOINT_FILE)
    torch.save(state, path)
    return path


def load_checkpoint(folder: str) -> dict:
    # weights_only: a checkpoint from untrusted storage cannot run code when loaded.
    return torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def evaluate(model, cfg: TrainConfig, ctx: WorkerContext, manifest) -> dict:
    """Top-1/top-5 error over the whole split, each sample seen by exactly one rank."""
    loader = build_loader(cfg.data_url, "val", batch_size=cfg.per_worker_batch_size,
                          rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                          image_size=cfg.image_size, augment=cfg.augment,
                          num_workers=cfg.loader_workers, eval_crops=cfg.eval_crops,
                          manifest=manifest)
    acc = Accumulator(ctx.device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(cfg, ctx):
        for images, labels in loader:
            crops = images.shape[1] if images.dim() == 5 else 0
            if crops:  # 10-crop: average the softmax over the crops of each image [P1 4.1]
                images = images.flatten(0, 1)
            x, y = _to_device(images, labels, cfg, ctx)
            logits = model(x).float()
            if crops:
                probs = logits.softmax(-1).view(len(y), crops, -1).mean(1)
                logits = probs.clamp_min(1e-12).log()
            acc.update(F.cross_entropy(logits, y, reduction="sum"), logits, y)
    model.train(was_training)
    result = acc.result(ctx.distributed)
    result["skipped"] = loader.skipped
    return result


def _autocast(cfg: TrainConfig, ctx: WorkerContext):
    enabled = cfg.precision == "bf16"
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=enabled)


def _to_device(images, labels, cfg, ctx):
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = normalize(images.to(ctx.device, non_blocking=True)).contiguous(memory_format=fmt)
    return x, labels.to(ctx.device, non_blocking=True)


def train(cfg: TrainConfig, ctx: WorkerContext) -> dict:
    """Train one (arch, depth, seed) run to the end, resuming from ``ctx.restore_dir`` if set.

    Returns the final metrics (as logged) on every rank.
    """
    train_manifest = read_manifest(cfg.data_url, "train")
    val_manifest = read_manifest(cfg.data_url, "val")
    num_classes = cfg.num_classes or len(train_manifest.classes)
    if not num_classes:
        raise ValueError("the manifest names no classes: set num_classes in the config")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg.arch, cfg.depth, dataset=cfg.dataset, num_classes=num_classes,
                        **cfg.model_options()).to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)

    per_epoch = steps_per_epoch(train_manifest.num_samples, ctx.world_size,
                                cfg.per_worker_batch_size)
    milestones = milestone_steps(cfg.lr_milestones, cfg.epochs * per_epoch)
    start_epoch, step = 0, 0
    if ctx.restore_dir:
        state = load_checkpoint(ctx.restore_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        torch.set_rng_state(state["torch_rng"])
        ctx.print0(f"[{cfg.run_name}] resumed at epoch {start_epoch}, step {step}")

    net = DistributedDataParallel(model) if ctx.distributed else model
    acc = Accumulator(ctx.device)
    final: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        loader = build_loader(cfg.data_url, "train", batch_size=cfg.per_worker_batch_size,
                              rank=ctx.rank, world_size=ctx.world_size, epoch=epoch,
                              seed=cfg.seed, image_size=cfg.image_size, augment=cfg.augment,
                              num_workers=cfg.loader_workers, manifest=train_manifest,
                              pin_memory=ctx.device.type == "cuda")
        net.train()
        acc.reset()
        t_last, images_since = time.perf_counter(), 0
        for images, labels in loader:
            lr = step_lr(step, base_lr=cfg.lr, milestones=milestones, gamma=cfg.lr_gamma,
                         warmup_steps=cfg.warmup_steps, warmup_lr=cfg.warmup_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = _to_device(images, labels, cfg, ctx)
            with _autocast(cfg, ctx):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            acc.update(loss * y.numel(), logits, y)
            step += 1
            images_since += y.numel()
            if step % cfg.log_every_steps == 0 or step % per_epoch == 0:
                res = acc.result(ctx.distributed)  # a collective: every rank is here
                now = time.perf_counter()
                rate = res["count"] / max(now - t_last, 1e-9)
                final.update({"train/loss": res["loss"], "train/error_top1": res["error_top1"],
                              "lr": lr, "throughput/images_per_sec": rate})
                ctx.tracker.log_metrics({k: final[k] for k in ("train/loss", "train/error_top1",
                                                               "lr", "throughput/images_per_sec")},
                                        step)
                acc.reset()
                t_last, images_since = now, 0

        val = evaluate(model, cfg, ctx, val_manifest)
        final.update({"val/error_top1": val["error_top1"], "val/error_top5": val["error_top5"],
                      "val/loss": val["loss"], "data/skipped_samples": loader.skipped + val["skipped"],
                      "epoch": epoch + 1})
        ctx.tracker.log_metrics({k: final[k] for k in ("val/error_top1", "val/error_top5",
                                                       "val/loss", "data/skipped_samples", "epoch")},
                                step)
        ctx.print0(f"[{cfg.run_name or cfg.arch + str(cfg.depth)}] epoch {epoch + 1}/{cfg.epochs} "
                   f"step {step} train err {final.get('train/error_top1', float('nan')):.1f}% "
                   f"val err {val['error_top1']:.1f}% ({val['count']} images)")
        _report(ctx, final, model, optimizer, cfg, epoch, step)
    return final


def _report(ctx, metrics, model, optimizer, cfg, epoch, step):
    if ctx.report is None:
        return
    if not ctx.is_main:
        ctx.report(dict(metrics), None)
        return
    with tempfile.TemporaryDirectory(prefix="depthlab-ckpt-") as folder:
        save_checkpoint(folder, model=model, optimizer=optimizer, cfg=cfg, epoch=epoch,
                        step=step, batch_in_epoch=0)
        ctx.report(dict(metrics), folder)
