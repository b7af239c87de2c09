"""``train(config, context)``: the whole life of one run inside one worker.

Runs the same in a single process and under Ray Train; everything distributed goes through the
``WorkerContext``. Every rank executes the same number of steps, log points and reports, which
Ray Train V2 requires (``report`` is a barrier) and DDP requires (collectives must match).

A checkpoint (at every epoch end, and every ``checkpoint_every_steps`` steps) holds everything
needed to continue as if nothing happened: model, optimizer (momentum buffers), the step, the
position in the epoch, the validation history the plateau schedule replays, the config and the
MLflow run id. The data order is a pure function of (seed, epoch), so a resumed run skips the
batches already consumed and sees the rest of the epoch exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from training.config import TrainConfig, config_changes, uses_channels_last
from training.context import WorkerContext
from training.data import build_loader, read_manifest
from training.metrics import Accumulator
from training.models import build_model
from training.perf import window_metrics
from training.responses import LayerResponses, summary_metrics
from training.schedule import milestone_steps, plateau_drops, scaled_lr, step_lr
from training.data.transforms import normalize

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_KEYS = ("train/loss", "train/error_top1", "lr", "throughput/images_per_sec")
VAL_KEYS = ("val/error_top1", "val/error_top5", "val/loss", "data/skipped_samples", "epoch")


def steps_per_epoch(num_samples: int, world_size: int, per_worker_batch: int) -> int:
    """Batches every rank runs per epoch (the loader drops the remainder; see training.data)."""
    steps = (num_samples // world_size) // per_worker_batch
    if steps < 1:
        raise ValueError(
            f"{num_samples} training samples are too few for {world_size} workers with "
            f"{per_worker_batch} samples each per step"
        )
    return steps


@dataclass
class RunPosition:
    """Where a run is: what a checkpoint must carry besides the weights."""

    epoch: int = 0  # the epoch in progress (or the next one, when batch == 0)
    batch: int = 0  # batches of that epoch already trained
    step: int = 0  # global iteration
    val_history: list[float] = field(default_factory=list)  # val top-1 after each evaluation


def save_checkpoint(folder: str, *, model, optimizer, cfg: TrainConfig, position: RunPosition,
                    undelivered_metrics: list | None = None) -> str:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": position.epoch,
        "batch_in_epoch": position.batch,
        "step": position.step,
        "val_history": list(position.val_history),
        "config": cfg.to_dict(),
        "mlflow_run_id": cfg.mlflow_run_id,
        "torch_rng": torch.get_rng_state(),
        # Metric points the tracking server had not taken yet: sent again after a resume.
        "undelivered_metrics": list(undelivered_metrics or []),
    }
    path = os.path.join(folder, CHECKPOINT_FILE)
    torch.save(state, path)
    return path


def load_checkpoint(folder: str) -> dict:
    # weights_only: a checkpoint from untrusted storage cannot run code when loaded.
    return torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def parameter_groups(model: torch.nn.Module, weight_decay: float, no_bn_decay: bool) -> list[dict]:
    """One group, or two when BN parameters and biases (all 1-d tensors) skip weight decay."""
    if not no_bn_decay:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def evaluate(model, cfg: TrainConfig, ctx: WorkerContext, manifest,
             responses: bool = False) -> dict:
    """Top-1/top-5 error over the whole split, each sample seen by exactly one rank; with
    ``responses``, also [P1] Fig. 7's layer responses of the same pass (``"responses"``)."""
    loader = build_loader(cfg.data_url, cfg.eval_split, batch_size=cfg.per_worker_batch_size,
                          rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                          image_size=cfg.image_size, augment=cfg.augment,
                          loader_workers=cfg.loader_workers, eval_crops=cfg.eval_crops,
                          manifest=manifest)
    acc = Accumulator(ctx.device)
    was_training = model.training
    model.eval()
    hooks = LayerResponses(model, ctx.device) if responses else contextlib.nullcontext()
    with torch.no_grad(), _autocast(cfg, ctx), hooks:
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
    if responses:
        result["responses"] = hooks.result(ctx.distributed)  # a collective: every rank is here
    return result


def _autocast(cfg: TrainConfig, ctx: WorkerContext):
    enabled = cfg.precision == "bf16"
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=enabled)


def _to_device(images, labels, cfg, ctx):
    fmt = torch.channels_last if uses_channels_last(cfg, ctx.device.type) else torch.contiguous_format
    x = normalize(images.to(ctx.device, non_blocking=True)).contiguous(memory_format=fmt)
    return x, labels.to(ctx.device, non_blocking=True)


def train_step(net, optimizer, images, labels, cfg: TrainConfig, ctx: WorkerContext,
               acc: Accumulator) -> None:
    """One SGD step on a uint8 batch; the metrics stay on the device (no host sync)."""
    x, y = _to_device(images, labels, cfg, ctx)
    with _autocast(cfg, ctx):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    acc.update(loss * y.numel(), logits, y)


class Schedule:
    """The learning rate of the run: the config's recipe as a function of the step."""

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.cfg = cfg
        self.base = (scaled_lr(cfg.lr, cfg.global_batch_size, cfg.lr_reference_batch)
                     if cfg.lr_reference_batch else cfg.lr)
        self.milestones = (milestone_steps(cfg.lr_milestones, total_steps)
                           if cfg.lr_schedule == "step" else ())

    def lr(self, step: int, val_history: list[float]) -> float:
        cfg = self.cfg
        drops = (plateau_drops(val_history, patience=cfg.plateau_patience)
                 if cfg.lr_schedule == "plateau" else 0)
        return step_lr(step, base_lr=self.base, milestones=self.milestones, gamma=cfg.lr_gamma,
                       warmup_steps=cfg.warmup_steps, warmup_lr=cfg.warmup_lr, warmup=cfg.warmup,
                       drops=drops)


def train(cfg: TrainConfig, ctx: WorkerContext) -> dict:
    """Train one (arch, depth, seed) run to the end, resuming from ``ctx.restore_dir`` if set.

    Returns the final metrics (as logged) on every rank.
    """
    train_manifest = read_manifest(cfg.data_url, "train")
    val_manifest = read_manifest(cfg.data_url, cfg.eval_split)
    num_classes = cfg.num_classes or len(train_manifest.classes)
    if not num_classes:
        raise ValueError("the manifest names no classes: set num_classes in the config")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg.arch, cfg.depth, dataset=cfg.family, num_classes=num_classes,
                        **cfg.model_options()).to(ctx.device)
    if uses_channels_last(cfg, ctx.device.type):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, cfg.weight_decay, cfg.no_bn_weight_decay),
                                lr=cfg.lr, momentum=cfg.momentum)

    per_epoch = steps_per_epoch(train_manifest.num_samples, ctx.world_size,
                                cfg.per_worker_batch_size)
    total_steps = cfg.max_steps or cfg.epochs * per_epoch
    epochs = math.ceil(total_steps / per_epoch)
    schedule = Schedule(cfg, total_steps)
    position = RunPosition()
    if ctx.restore_dir:
        state = load_checkpoint(ctx.restore_dir)
        changes = config_changes(state.get("config", {}), cfg.to_dict())
        if changes:
            raise ValueError(
                f"[{cfg.run_name}] refusing to resume from {ctx.restore_dir}: it was trained "
                "with other settings (" + "; ".join(f"{k}: {a!r} there, {b!r} here"
                                                    for k, a, b in changes) + ")")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        position = RunPosition(state["epoch"], state["batch_in_epoch"], state["step"],
                            list(state["val_history"]))
        torch.set_rng_state(state["torch_rng"])
        ctx.tracker.requeue(state.get("undelivered_metrics", []))
        ctx.print0(f"[{cfg.run_name}] resumed at step {position.step} "
                   f"(epoch {position.epoch + 1}, batch {position.batch})")

    net = model
    if ctx.distributed:
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            bucket_cap_mb=cfg.ddp_bucket_cap_mb, gradient_as_bucket_view=True)
    if cfg.compile:
        net = torch.compile(net)
    acc = Accumulator(ctx.device)
    final: dict = {}
    jit_saved = False  # one just-in-time checkpoint per preemption notice is enough
    while position.step < total_steps:
        epoch = position.epoch
        loader = build_loader(cfg.data_url, "train", batch_size=cfg.per_worker_batch_size,
                              rank=ctx.rank, world_size=ctx.world_size, epoch=epoch,
                              seed=cfg.seed, image_size=cfg.image_size, augment=cfg.augment,
                              loader_workers=cfg.loader_workers, manifest=train_manifest,
                              skip_batches=position.batch, pin_memory=ctx.device.type == "cuda")
        net.train()
        acc.reset()
        t_last = time.perf_counter()
        waited, window_steps, window_made = 0.0, 0, (loader.produced, loader.producing_s)
        batches = iter(loader)
        while True:
            t_ask = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - t_ask
            window_steps += 1
            lr = schedule.lr(position.step, position.val_history)
            for group in optimizer.param_groups:
                group["lr"] = lr
            train_step(net, optimizer, images, labels, cfg, ctx, acc)
            position.step += 1
            position.batch += 1
            end_of_epoch = position.batch == per_epoch or position.step == total_steps
            if position.step % cfg.log_every_steps == 0 or end_of_epoch:
                res = acc.result(ctx.distributed)  # a collective: every rank is here
                now = time.perf_counter()
                final.update({"train/loss": res["loss"], "train/error_top1": res["error_top1"],
                              "lr": lr, "throughput/images_per_sec": res["count"] / max(now - t_last, 1e-9)})
                # Rank 0's own timings: the pace of its worker (training.perf).
                perf = window_metrics(window_s=now - t_last, wait_s=waited, steps=window_steps,
                                      batch_images=cfg.per_worker_batch_size,
                                      produced=loader.produced - window_made[0],
                                      producing_s=loader.producing_s - window_made[1])
                final.update(perf)
                ctx.tracker.log_metrics({k: final[k] for k in TRAIN_KEYS} | perf, position.step)
                acc.reset()
                t_last = now
                waited, window_steps, window_made = 0.0, 0, (loader.produced, loader.producing_s)
            if end_of_epoch:
                break
            if cfg.checkpoint_every_steps and position.step % cfg.checkpoint_every_steps == 0:
                _report(ctx, dict(final), model, optimizer, cfg, position)
            elif (ctx.preempted is not None and not jit_saved
                  and position.step % cfg.log_every_steps == 0 and ctx.preempted()):
                # A node of this run is being drained (spot reclaim): save now, not at the next
                # epoch end, so the restart loses at most log_every_steps steps. Asked at log
                # steps only: under Ray it is a barrier across the ranks.
                jit_saved = True
                ctx.print0(f"[{cfg.run_name}] node preemption notice at step {position.step}: "
                           "just-in-time checkpoint")
                ctx.tracker.log_metrics({"checkpoint/preemption_step": position.step}, position.step)
                _report(ctx, dict(final), model, optimizer, cfg, position)

        last = position.step >= total_steps
        measure = cfg.layer_responses == "every_eval" or (cfg.layer_responses == "end" and last)
        val = evaluate(model, cfg, ctx, val_manifest, responses=measure)
        if measure:
            _log_responses(ctx, cfg, val["responses"], position.step)
        position.val_history.append(val["error_top1"])
        position.epoch, position.batch = epoch + 1, 0
        final.update({"val/error_top1": val["error_top1"], "val/error_top5": val["error_top5"],
                      "val/loss": val["loss"], "data/skipped_samples": loader.skipped + val["skipped"],
                      "epoch": epoch + 1})
        ctx.tracker.log_metrics({k: final[k] for k in VAL_KEYS}, position.step)
        ctx.print0(f"[{cfg.run_name or cfg.arch + str(cfg.depth)}] epoch {epoch + 1}/{epochs} "
                   f"step {position.step} train err {final.get('train/error_top1', float('nan')):.1f}% "
                   f"val err {val['error_top1']:.1f}% ({val['count']} images)")
        _report(ctx, dict(final), model, optimizer, cfg, position)
    if cfg.log_model and ctx.is_main:
        example = normalize(torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=ctx.device))
        ctx.tracker.log_model(model, example)
    return final


def _log_responses(ctx, cfg: TrainConfig, responses: dict, step: int) -> None:
    """The layer responses as one artifact per evaluation and their summary as metrics."""
    ctx.tracker.log_metrics(summary_metrics(responses["std"], responses["layers"]), step)
    ctx.tracker.log_json({"step": step, "split": cfg.eval_split, "arch": cfg.arch, "depth": cfg.depth,
                          **responses}, f"responses/layer_responses-step{step:08d}.json")


def _report(ctx, metrics, model, optimizer, cfg, position: RunPosition):
    if ctx.report is None:
        return
    metrics["step"] = position.step
    if not ctx.is_main:
        ctx.report(metrics, None)
        return
    # What was logged before this checkpoint must reach the tracking server or travel with it:
    # a run resumed from here never logs those steps again.
    undelivered = ctx.tracker.flush()
    with tempfile.TemporaryDirectory(prefix="depthlab-ckpt-") as folder:
        save_checkpoint(folder, model=model, optimizer=optimizer, cfg=cfg, position=position,
                        undelivered_metrics=undelivered)
        ctx.report(metrics, folder)
