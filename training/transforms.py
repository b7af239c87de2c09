"""Augmentations as PIL -> uint8 CHW tensors (normalisation happens on the device, in the loop).

- ``cifar`` [P1 4.2]: pad 4 (zeros), random crop, horizontal flip; evaluation uses the image as is.
  The pad scales with the image (4 pixels at 32) so small demo images keep the same recipe.
- ``imagenet``: RandomResizedCrop + flip for training (the common recipe since Inception);
  evaluation takes the single center crop of the image resized to 256/224 of the crop size.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

AUGMENTS = ("cifar", "imagenet")

# Per-channel statistics of ImageNet, in 0..255; used for every dataset (the papers subtract a
# per-pixel mean; per-channel is the standard simplification and makes no measurable difference).
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def build_transform(augment: str, image_size: int, *, train: bool):
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
    to_tensor = v2.PILToTensor()
    if augment == "cifar":
        if not train:
            return v2.Compose([to_tensor, v2.Resize(image_size, antialias=True),
                               v2.CenterCrop(image_size)])
        pad = max(1, round(image_size / 8))
        return v2.Compose([to_tensor, v2.Resize(image_size, antialias=True),
                           v2.RandomCrop(image_size, padding=pad),
                           v2.RandomHorizontalFlip()])
    if train:
        return v2.Compose([to_tensor, v2.RandomResizedCrop(image_size, antialias=True),
                           v2.RandomHorizontalFlip()])
    resize = round(image_size * 256 / 224)
    return v2.Compose([to_tensor, v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on any device -> float, mean-subtracted and scaled."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std
