"""Classification metrics kept as device tensors, so no training step waits for the host."""

from __future__ import annotations

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (as tensors)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class Accumulator:
    """Running sums (loss, correct@1, correct@5, count) on the device; all-reduced on demand."""

    def __init__(self, device):
        self.device = device
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        c1, c5 = topk_correct(logits.detach(), labels)
        self.sums += torch.stack([loss_sum.detach().double(), c1.double(), c5.double(),
                                  torch.tensor(labels.numel(), device=self.device, dtype=torch.float64)])

    def reset(self) -> None:
        self.sums.zero_()

    def result(self, distributed: bool) -> dict:
        sums = self.sums.clone()
        if distributed:
            dist.all_reduce(sums)
        loss, c1, c5, n = sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "error_top1": 100.0 * (1 - c1 / n),
                "error_top5": 100.0 * (1 - c5 / n), "count": int(sums[3].item())}
