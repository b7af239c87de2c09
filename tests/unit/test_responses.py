"""[P1] Fig. 7's layer responses: the right tensors, the right statistic, once per sample."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.config import TrainConfig
from training.context import NullTracker, WorkerContext
from training.loop import evaluate, train
from training.models import build_model
from training.responses import LayerResponses, response_points, summary_metrics


def test_the_responses_of_a_tiny_net_are_the_std_of_its_bn_outputs():
    torch.manual_seed(0)
    model = build_model("residual", 8, dataset="cifar").eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad(), LayerResponses(model, torch.device("cpu")) as hooks:
        model(x)
    got = hooks.result(distributed=False)
    # By hand: the stem's BN, then each unit's two BNs, before their ReLU and the addition.
    expected, names = [], []
    with torch.no_grad():
        h = model.bn1(model.conv1(x))
        expected.append(h.double().std(unbiased=False).item())
        names.append("conv1")
        h = torch.relu(h)
        for stage in ("layer1", "layer2", "layer3"):
            unit = getattr(model, stage)[0]
            a = unit.bn1(unit.conv1(h))
            b = unit.bn2(unit.conv2(torch.relu(a)))
            expected += [a.double().std(unbiased=False).item(), b.double().std(unbiased=False).item()]
            names += [f"{stage}.0.conv1", f"{stage}.0.conv2"]
            h = unit(h)
    assert got["layers"] == names
    assert got["std"] == pytest.approx(expected, rel=1e-9)


def test_each_unit_kind_measures_its_counterpart_of_p1s_tensor():
    def measured(arch, depth=20, **kw):
        model = build_model(arch, depth, dataset="cifar", **kw)
        unit = model.layer1[1]
        return {name.split(".")[-1]: next(n for n, m in unit.named_children() if m is module)
                for name, module in response_points(model) if name.startswith("layer1.1.")}

    assert measured("residual") == {"conv1": "bn1", "conv2": "bn2"}
    assert measured("relu_before_add") == {"conv1": "bn1", "conv2": "bn2"}
    assert measured("relu_preact") == {"conv1": "bn1", "conv2": "bn2"}
    # Full pre-activation: the next conv's pre-activation BN, and the last conv's raw output.
    assert measured("preact") == {"conv1": "bn2", "conv2": "conv2"}
    # BN after addition normalises the sum: the branch's last conv is measured before it.
    assert measured("bn_after_add") == {"conv1": "bn1", "conv2": "conv2"}
    # Bottlenecks: only the 3x3 conv is a 3x3 layer.
    assert measured("preact", 20, block="bottleneck") == {"conv2": "bn3"}
    assert len(response_points(build_model("plain", 56, dataset="cifar"))) == 55


def test_the_summary_metrics_are_per_stage_means():
    stds = [1.0, 2.0, 4.0, 3.0, 5.0]
    layers = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2"]
    m = summary_metrics(stds, layers)
    assert m["responses/mean_std"] == 3.0 and m["responses/max_std"] == 5.0
    assert m["responses/layer1_mean_std"] == 3.0 and m["responses/layer2_mean_std"] == 4.0


class Recorder(NullTracker):
    def __init__(self):
        self.points, self.json = [], []

    def log_metrics(self, metrics, step):
        self.points.append((step, dict(metrics)))

    def log_json(self, data, artifact_file):
        self.json.append((artifact_file, data))


def test_a_run_logs_its_responses_at_the_end(shards):
    rec = Recorder()
    cfg = TrainConfig(arch="preact", depth=8, data_url=shards, image_size=16, epochs=2,
                      global_batch_size=32, log_every_steps=5)
    train(cfg, WorkerContext(tracker=rec))
    ((name, data),) = rec.json
    assert name == "responses/layer_responses-step00000010.json" and data["step"] == 10
    assert len(data["std"]) == len(data["layers"]) == 7 and all(s > 0 for s in data["std"])
    assert any("responses/mean_std" in m for _, m in rec.points)
    every = Recorder()
    train(cfg.replace(layer_responses="every_eval"), WorkerContext(tracker=every))
    assert [n for n, _ in every.json] == [f"responses/layer_responses-step{s:08d}.json"
                                          for s in (5, 10)]


def _rank(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model("residual", 8, dataset="cifar", num_classes=4)
    cfg = TrainConfig(arch="residual", depth=8, data_url=shards, image_size=16,
                      global_batch_size=8 * world, world_size=world)
    from training.data import read_manifest

    result = evaluate(model, cfg, WorkerContext(rank=rank, world_size=world),
                      read_manifest(shards, "val"), responses=True)
    dist.destroy_process_group()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.timeout(300)
def test_two_ranks_measure_what_one_process_measures(shards, tmp_path):
    from conftest import free_port

    from training.data import read_manifest

    torch.manual_seed(0)
    model = build_model("residual", 8, dataset="cifar", num_classes=4)
    cfg = TrainConfig(arch="residual", depth=8, data_url=shards, image_size=16,
                      global_batch_size=8)
    alone = evaluate(model, cfg, WorkerContext(), read_manifest(shards, "val"), responses=True)
    mp.spawn(_rank, args=(2, free_port(), shards, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["count"] == alone["count"] == 52  # every validation sample once
    for r in ranks:
        assert r["responses"]["layers"] == alone["responses"]["layers"]
        assert r["responses"]["std"] == pytest.approx(alone["responses"]["std"], rel=1e-9)
