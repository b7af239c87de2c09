"""The papers' training recipes as named presets ([P1], [P2]; numbers in the papers' text).

A spec selects one with ``train.recipe``; every value it sets can still be overridden in the
spec or with ``--set``. The presets fill the settings; they do not change the loop.
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    # [P1] 3.4: SGD, batch 256, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 when the
    # error plateaus, up to 600k iterations (about 120 epochs); scale augmentation, 10-crop test.
    "imagenet_paper": dict(
        family="imagenet", augment="imagenet_paper", image_size=224, eval_crops=10,
        global_batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4,
        lr_schedule="plateau", epochs=120, lr_reference_batch=256,
    ),
    # [P2] and most reproductions: lr divided by 10 at epochs 30 and 60 of 90.
    "imagenet_steps": dict(
        family="imagenet", augment="imagenet", image_size=224, eval_crops=1,
        global_batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4,
        lr_schedule="step", epochs=90, lr_milestones=(30 / 90, 60 / 90), lr_reference_batch=256,
    ),
    # [P1] 4.2: batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k; [P2]:
    # lr 0.01 for the first 400 iterations of every CIFAR run ([P1]: ResNet-110 only).
    "cifar_paper": dict(
        family="cifar", augment="cifar", image_size=32, eval_crops=1,
        global_batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
        lr_schedule="step", max_steps=64_000, lr_milestones=(0.5, 0.75),
        warmup_steps=400, warmup_lr=0.01, warmup="constant", lr_reference_batch=128,
    ),
}


def recipe_values(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
