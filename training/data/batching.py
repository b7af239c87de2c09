"""Batches assembled one image at a time, over channels_last memory.

Each image a transform returns is copied into its row of the batch. Handing the transforms
their row to write into instead (the resize's output being the batch itself) did not pay for an
``out`` argument threaded through every transform (`bench/results/parts-removed.md`).
"""

from __future__ import annotations

import torch


def empty_batch(size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Room for ``size`` uint8 images of ``shape`` (..., C, H, W), seen as (size, ..., C, H, W)
    over channels_last memory.

    Each image is HWC, what the decoders, the resize and CIFAR's shift produce, so filling a
    row is a plain copy (into CHW memory it is a strided gather, several times slower), and the
    model takes channels_last input on the devices where that layout is faster.
    """
    *lead, c, h, w = shape
    return torch.empty((size, *lead, h, w, c), dtype=torch.uint8).movedim(-1, -3)


class BatchBuilder:
    """Assembles one ``(images, labels, skipped)`` batch at a time; the batch's shape is the
    first image's."""

    def __init__(self, size: int):
        self.size = size
        self._start()

    def _start(self) -> None:
        self.images, self.labels, self.skipped = None, [], 0

    @property
    def slots(self) -> int:
        """Samples taken into this batch so far, skipped ones included."""
        return len(self.labels) + self.skipped

    def skip(self) -> None:
        """A bad sample: it takes a turn but no row."""
        self.skipped += 1

    def add(self, image: torch.Tensor, label: int) -> None:
        if self.images is None:
            self.images = empty_batch(self.size, tuple(image.shape))
        row = self.images[len(self.labels)]
        if image.shape != row.shape:  # copy_ would broadcast a smaller image silently
            raise ValueError(f"the transform gave an image of shape {tuple(image.shape)}, "
                             f"the batch holds {tuple(row.shape)}")
        row.copy_(image)
        self.labels.append(label)

    def take(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The batch so far; the builder starts the next. A short batch (the last, or one
        with skipped samples) is copied out, so it holds no memory for the missing rows."""
        n = len(self.labels)
        if self.images is None:
            images = torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        else:
            images = self.images if n == self.size else self.images[:n].clone()
        batch = (images, torch.tensor(self.labels, dtype=torch.long), self.skipped)
        self._start()
        return batch
