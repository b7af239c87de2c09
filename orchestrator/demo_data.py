"""A small ImageNet-layout dataset of real JPEG files with a signal a ConvNet can learn.

Each class is a (shape, stripe tilt) pair: a disk, square or triangle filled with a grating
tilted by one of several angles between 0 and 90 degrees from the horizontal, to the left or to
the right at random, at a random place, scale, phase and colour, over a noisy textured background
with a distractor grating of random orientation. Tilts are unsigned so that the horizontal flip
of the training augmentation keeps every label (a signed orientation would turn 45 degrees into
135 degrees, another class: label noise that puts a floor under every network's error). The
random phase and position make the class invisible to a linear model on pixels (the average
image of every class is nearly the same), while local oriented filters and their composition
separate the classes.

Two datasets of the local stack use it: the demo's (10 classes) and the CPU degradation study's
(12 classes: 3 shapes x 4 tilts, 0/30/60/90 degrees), see ``DATASETS``.

Layout (as ImageNet's): ``root/{train,val}/<class id>/<class id>_<n>.JPEG`` and ``root/classes.txt``
(``<class id> <class name>`` per line, like the devkit's mapping). With ``holdout_per_class``,
also ``root/holdout/``: fresh images of the same classes, for choosing settings (a sweep's
``tune`` stage) without looking at the split the report uses.
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("disk", "square", "triangle")


def class_table(num_classes: int) -> list[tuple[str, str, float]]:
    """``(class id, name, tilt in radians)`` for each class, ids in sorted order; the tilts of
    a shape are spread evenly over [0, 90] degrees."""
    tilts = max(2, math.ceil(num_classes / len(SHAPES)))
    out = []
    for k in range(num_classes):
        shape = SHAPES[k % len(SHAPES)]
        theta = (math.pi / 2) * (k // len(SHAPES)) / (tilts - 1)
        out.append((f"c{k:03d}", f"{shape}-{round(math.degrees(theta))}deg", theta))
    return out


def _shape_mask(shape: str, yy, xx, cy, cx, r):
    if shape == "disk":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if shape == "square":
        return (abs(yy - cy) <= r * 0.85) & (abs(xx - cx) <= r * 0.85)
    # An upward triangle: below the apex lines and above the base.
    return (yy <= cy + r * 0.8) & (yy - (cy - r) >= 1.7 * abs(xx - cx))


def render(rng: np.random.Generator, shape: str, theta: float, size: int) -> np.ndarray:
    """One HxWx3 uint8 image of the given class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: smooth colour gradient plus pixel noise.
    base = rng.uniform(40, 200, size=3)
    grad = rng.uniform(-40, 40, size=3)
    img = base + grad * (xx[..., None] / size) + rng.normal(0, 10, size=(size, size, 3))
    # Distractor: a faint grating of random orientation over the whole image.
    phi = rng.uniform(0, math.pi)
    freq = rng.uniform(0.25, 0.45) * 2 * math.pi / 4
    img += 12 * np.sin(freq * (xx * math.cos(phi) + yy * math.sin(phi)))[..., None]
    # The object: a shape filled with a grating at the class tilt, in a random colour and its
    # complement (always high contrast, so the shape's outline stays visible). The stripe
    # period is in pixels (about 4), so it stays visible on small images.
    r = rng.uniform(0.32, 0.45) * size
    cy, cx = rng.uniform(r * 0.9, size - r * 0.9, size=2)
    mask = _shape_mask(shape, yy, xx, cy, cx, r)
    f = rng.uniform(0.8, 1.2) * 2 * math.pi / 4.0
    t = (theta if rng.random() < 0.5 else math.pi - theta) + rng.normal(0, 0.06)
    wave = np.sin(f * (xx * math.cos(t) + yy * math.sin(t)) + rng.uniform(0, 2 * math.pi))
    fg = rng.uniform(0, 255, size=3)
    stripes = np.where(wave[..., None] > 0, fg, 255 - fg)
    img = np.where(mask[..., None], 0.85 * stripes + 0.15 * img, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(root: str | Path, *, num_classes: int = 10, train_per_class: int = 400,
             val_per_class: int = 60, size: int = 16, seed: int = 0, quality: int = 90,
             holdout_per_class: int = 0) -> Path:
    """Write the dataset under ``root`` (idempotent: an existing complete dataset is kept).

    The defaults are the demo's: 4,000 training and 600 validation images of 16x16 pixels.
    """
    root = Path(root)
    done = root / ".complete"
    wanted = signature(num_classes, train_per_class, val_per_class, size, seed, quality,
                       holdout_per_class)
    if done.exists() and done.read_text().strip() == wanted:
        return root
    for split in ("train", "val", "holdout"):  # another or a partial dataset: nothing may remain
        shutil.rmtree(root / split, ignore_errors=True)
    table = class_table(num_classes)
    # Each split draws from its own generators (offset), so adding a split changes no image.
    splits = [("train", train_per_class, 0), ("val", val_per_class, 1)]
    if holdout_per_class:
        splits.append(("holdout", holdout_per_class, 2))
    for split, per_class, offset in splits:
        for k, (cid, _, theta) in enumerate(table):
            folder = root / split / cid
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, offset, k])
            shape = SHAPES[k % len(SHAPES)]
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(render(rng, shape, theta, size)).save(buf, "JPEG", quality=quality)
                (folder / f"{cid}_{i}.JPEG").write_bytes(buf.getvalue())
    (root / "classes.txt").write_text("".join(f"{cid} {name}\n" for cid, name, _ in table))
    done.write_text(wanted)
    return root


# The datasets the local stack keeps in its bucket: prefix -> generate() arguments.
DATASETS = {
    "demo-data": {"num_classes": 10, "train_per_class": 400, "val_per_class": 60,
                  "holdout_per_class": 60},
    "shapes12": {"num_classes": 12, "train_per_class": 400, "val_per_class": 60,
                 "holdout_per_class": 60},
}


# Bumped whenever the rendering changes, so that a dataset made by older code is rebuilt.
VERSION = 3


def signature(num_classes: int = 10, train_per_class: int = 400, val_per_class: int = 60,
              size: int = 16, seed: int = 0, quality: int = 90, holdout_per_class: int = 0) -> str:
    """What identifies a generated dataset: the rendering's version and ``generate``'s arguments."""
    fields = [f"v{VERSION}", num_classes, train_per_class, val_per_class, size, seed, quality]
    return " ".join(map(str, fields + ([f"holdout{holdout_per_class}"] if holdout_per_class else [])))
