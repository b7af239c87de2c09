"""Batches assembled in place: each image is written straight into its slot of the batch.

The transforms write their output into the slot they are given (``out``, see
``training/data/transforms.py``), so the resize's output is the batch itself. Stacking per-image
tensors afterwards made every image twice, the second time out of cache: the loader ran ~3%
faster without (`README.md`, "Benchmarks").
"""

from __future__ import annotations

import numpy as np
import torch


def empty_batch(size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Room for ``size`` uint8 images of ``shape`` (..., C, H, W), seen as (size, ..., C, H, W)
    over channels_last memory.

    Each image is HWC, what the decoders, the resize and CIFAR's shift produce, so filling a
    slot is a plain copy (into CHW memory it is a strided gather: copying 64 images of 224 into
    an existing batch took 3.3-3.6 ms that way against 0.9 ms, one core, a scratch timing).

    The memory comes from numpy (malloc) rather than ``torch.empty`` (posix_memalign): in 8 of
    11 runs of a scratch benchmark, batches from ``torch.empty`` came back as fresh pages from
    the kernel after every batch (~28 page faults per image against 2-6, the loader ~2.5%
    slower), those from numpy in none of 16.
    """
    *lead, c, h, w = shape
    return torch.from_numpy(np.empty((size, *lead, h, w, c), dtype=np.uint8)).movedim(-1, -3)


class BatchBuilder:
    """Assembles one ``(images, labels, skipped)`` batch at a time, in place.

    A transform with an output ``shape`` writes each image into its slot (``slot()``); a
    transform without one returns its images, copied into a batch shaped after the first.
    """

    def __init__(self, size: int, shape: tuple[int, ...] | None = None):
        self.size, self.shape = size, shape
        self._start()

    def _start(self) -> None:
        self.images, self.labels, self.skipped = None, [], 0

    @property
    def slots(self) -> int:
        """Samples taken into this batch so far, skipped ones included."""
        return len(self.labels) + self.skipped

    def slot(self) -> torch.Tensor | None:
        """Where the next image goes, for a transform with a ``shape``; else None."""
        if self.shape is None:
            return None
        if self.images is None:
            self.images = empty_batch(self.size, self.shape)
        return self.images[len(self.labels)]

    def skip(self) -> None:
        """A bad sample: it takes a slot's turn but no row (a half-written slot is reused)."""
        self.skipped += 1

    def add(self, image: torch.Tensor, label: int) -> None:
        if self.images is None:
            self.images = empty_batch(self.size, tuple(image.shape))
        slot = self.images[len(self.labels)]
        if image.shape != slot.shape:  # copy_ would broadcast a smaller image silently
            raise ValueError(f"the transform gave an image of shape {tuple(image.shape)}, "
                             f"the batch holds {tuple(slot.shape)}")
        if image.data_ptr() != slot.data_ptr():  # not written in place
            slot.copy_(image)
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
