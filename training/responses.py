"""[P1] Fig. 7: the layer responses of a network, the standard deviation of each 3x3 conv
layer's output after its BN and before the ReLU or the addition, over a data split.

Which tensor, per unit kind (``response_points``):
- post-activation units (plain, residual, ReLU before addition) and ReLU-only pre-activation:
  the output of the BN that normalises the conv's output, exactly [P1]'s definition;
- full pre-activation: a conv's output is normalised by the next conv's pre-activation BN,
  so that BN's output is measured; the unit's last conv has no BN after it, and its raw
  output (what the unit adds to its input) is measured: in both cases the residual function's
  signal at the same place in the unit as [P1]'s, before any ReLU or addition;
- BN after addition: the last conv's BN normalises the sum, so that conv's raw output (the
  branch before the addition) is measured.
The stem's conv is layer 1 (after its BN), then the units' 3x3 convs in order.

The statistics are sums (count, sum, sum of squares, in float64) over every element of every
sample, summed over ranks with one all-reduce; the evaluation loader gives each sample to
exactly one rank, so the result is the same on any number of ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from training.models import ResidualUnit


def response_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(layer name, module whose output is measured)`` per 3x3 conv, in depth order."""
    points = [("conv1", model.bn1)] if getattr(model.conv1, "kernel_size", None) == (3, 3) else []
    for name, unit in model.named_modules():
        if not isinstance(unit, ResidualUnit):
            continue
        for i, op in enumerate(unit.body):
            conv = getattr(unit, op)
            if not (op.startswith("conv") and conv.kernel_size == (3, 3)):
                continue
            following = unit.body[i + 1] if i + 1 < len(unit.body) else None
            measured = following if following and following.startswith("bn") else op
            points.append((f"{name}.{op}", getattr(unit, measured)))
    return points


class LayerResponses:
    """Hooks that add up each measured output's count, sum and sum of squares."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.points = response_points(model)
        self.sums = torch.zeros(len(self.points), 3, dtype=torch.float64, device=device)
        self._handles = []

    def __enter__(self) -> "LayerResponses":
        for i, (_, module) in enumerate(self.points):
            self._handles.append(module.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def add(module, inputs, output):
            x = output.detach().double()
            self.sums[index] += torch.stack([
                torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                x.sum(), (x * x).sum()])
        return add

    def result(self, distributed: bool) -> dict:
        """``{"layers": [...], "std": [...]}`` over everything seen, on every rank."""
        sums = self.sums.clone()
        if distributed:
            dist.all_reduce(sums)
        stds = []
        for n, s, q in sums.tolist():
            n = max(n, 1.0)
            stds.append(max(q / n - (s / n) ** 2, 0.0) ** 0.5)
        return {"layers": [name for name, _ in self.points], "std": stds}


def summary_metrics(stds: list[float], layers: list[str]) -> dict[str, float]:
    """A compact form for MLflow's compare view: mean and max over the layers, and the mean of
    each stage (``layer1``, ``layer2``, ... as the modules are named)."""
    if not stds:
        return {}
    out = {"responses/mean_std": sum(stds) / len(stds), "responses/max_std": max(stds)}
    stages: dict[str, list[float]] = {}
    for name, std in zip(layers, stds):
        stages.setdefault(name.split(".")[0], []).append(std)
    for stage, values in stages.items():
        if stage.startswith("layer"):
            out[f"responses/{stage}_mean_std"] = sum(values) / len(values)
    return out
