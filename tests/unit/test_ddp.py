"""Two DDP ranks in plain processes (gloo, no Ray): the contract Ray Train relies on."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.config import TrainConfig
from training.context import WorkerContext
from training.loop import train

pytestmark = pytest.mark.timeout(300)


def _worker(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    reports = []
    cfg = TrainConfig(arch="preact", depth=8, data_url=shards, image_size=16, epochs=2,
                      global_batch_size=32, world_size=world, log_every_steps=2,
                      checkpoint_every_steps=3)
    ctx = WorkerContext(rank=rank, world_size=world,
                        report=lambda m, ckpt: reports.append((m["step"], ckpt is not None)))
    final = train(cfg, ctx)
    dist.destroy_process_group()
    torch.save({"reports": reports, "final": final}, os.path.join(out, f"rank{rank}.pt"))


def test_two_ranks_report_together_and_agree(shards, tmp_path):
    from conftest import free_port

    mp.spawn(_worker, args=(2, free_port(), shards, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    # 160 samples / 2 ranks / 16 per rank = 5 steps an epoch; checkpoints at 3, 5 (end), 6, 9, 10 (end).
    assert [s for s, _ in r0["reports"]] == [s for s, _ in r1["reports"]] == [3, 5, 6, 9, 10]
    assert all(has for _, has in r0["reports"]) and not any(has for _, has in r1["reports"])
    # Metrics are all-reduced: both ranks hold the same numbers.
    assert r0["final"]["val/error_top1"] == r1["final"]["val/error_top1"]
    assert r0["final"]["train/loss"] == pytest.approx(r1["final"]["train/loss"])
