"""CIFAR-10 and CIFAR-100 read from their official archives, pixels untouched.

The archives are the ones torchvision downloads: ``cifar-10-python.tar.gz`` (python pickles in
``cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch``, ``batches.meta``) and
``cifar-100-python.tar.gz`` (``cifar-100-python/``: ``train``, ``test``, ``meta``; the 100 fine
labels). Each image is 3,072 bytes (the red, green and blue 32x32 planes); it is stored as a PNG
of exactly those pixels, so the shards hold the papers' data, not a JPEG approximation of it.

Splits: ``train`` (the five training batches), ``val`` (the test batch, as the papers report
their test error on it) and, with ``holdout=N``, [P1]'s tuning split: ``train`` is the first
50,000 - N training images, ``val`` the last N, and the test batch becomes ``test``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from orchestrator.sources import SourceSample, SplitSource

ARCHIVES = {"cifar-10-python.tar.gz": "cifar10", "cifar-100-python.tar.gz": "cifar100"}
FOLDERS = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}
_LAYOUT = {  # name: (training members, test member, meta member, label names key, labels key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "label_names", "labels"),
    "cifar100": (["train"], "test", "meta", "fine_label_names", "fine_labels"),
}


def find_cifar(path: Path) -> tuple[str, Path] | None:
    """``(name, archive or extracted folder)`` when ``path`` is, or holds exactly one, CIFAR
    archive or extracted folder; None when it holds none."""
    path = Path(path)
    if path.is_file() and path.name in ARCHIVES:
        return ARCHIVES[path.name], path
    if path.is_dir() and path.name in FOLDERS:
        return FOLDERS[path.name], path
    if not path.is_dir():
        return None
    found = [(ARCHIVES[p.name], p) for p in sorted(path.iterdir()) if p.name in ARCHIVES]
    found += [(FOLDERS[p.name], p) for p in sorted(path.iterdir())
              if p.name in FOLDERS and p.is_dir() and FOLDERS[p.name] not in {n for n, _ in found}]
    if len({name for name, _ in found}) > 1:
        raise ValueError(f"{path} holds both CIFAR-10 and CIFAR-100: give the archive itself "
                         f"({', '.join(str(p) for _, p in found)})")
    return found[0] if found else None


def _unpickle(data: bytes) -> dict:
    return pickle.loads(data, encoding="bytes")


@lru_cache(maxsize=2)
def read_cifar(path: Path) -> dict:
    """``{"classes", "train": (pixels N x 3072 uint8, labels), "test": (...)}`` of an archive or
    an extracted folder."""
    name = (ARCHIVES | FOLDERS)[path.name]
    train_members, test_member, meta_member, names_key, labels_key = _LAYOUT[name]
    wanted = set(train_members) | {test_member, meta_member}
    members: dict[str, dict] = {}
    if path.is_dir():
        for member in wanted:
            if (path / member).is_file():
                members[member] = _unpickle((path / member).read_bytes())
    else:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if m.isfile() and Path(m.name).name in wanted:
                    members[Path(m.name).name] = _unpickle(tar.extractfile(m).read())
    missing = sorted(wanted - set(members))
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}: not a complete {name} archive")

    def split(parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.concatenate([np.asarray(p[b"data"], dtype=np.uint8) for p in parts])
        labels = np.concatenate([np.asarray(p[labels_key.encode()], dtype=np.int64) for p in parts])
        if pixels.ndim != 2 or pixels.shape[1] != 3072 or len(pixels) != len(labels):
            raise ValueError(f"{path}: image data of shape {pixels.shape}, expected N x 3072")
        return pixels, labels

    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in members[meta_member][names_key.encode()]]
    return {"name": name, "classes": names,
            "train": split([members[m] for m in train_members]),
            "test": split([members[test_member]])}


def png_of(row: np.ndarray) -> bytes:
    """A PNG of one CIFAR row (red, green and blue 32x32 planes), lossless."""
    image = Image.fromarray(np.ascontiguousarray(row.reshape(3, 32, 32).transpose(1, 2, 0)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _reader(pixels: np.ndarray, index: int):
    return lambda: png_of(pixels[index])


def load_cifar_split(path: Path, split: str, *, holdout: int = 0) -> SplitSource:
    """The samples of ``split`` ("train", "val", or "test" with a holdout) as lossless PNGs.

    Classes are the archive's label names; a sample's label is its class's position in
    sorted order (torchvision's ImageFolder rule: for both archives that is the archive's own
    numbering, whose names are already sorted)."""
    data = read_cifar(Path(path))
    classes = sorted(data["classes"])
    remap = np.array([classes.index(n) for n in data["classes"]])
    train_pixels, train_labels = data["train"]
    if not 0 <= holdout < len(train_pixels):
        raise ValueError(f"holdout must be in [0, {len(train_pixels)}), got {holdout}")
    cut = len(train_pixels) - holdout
    ranges = {"train": ("train", 0, cut)}
    if holdout:
        ranges |= {"val": ("train", cut, len(train_pixels)), "test": ("test", 0, None)}
    else:
        ranges["val"] = ("test", 0, None)
    if split not in ranges:
        raise ValueError(f"{data['name']} has no {split!r} split"
                         + ("" if holdout else " without a holdout (--holdout 5000 makes "
                            "train/val/test)") + f": choose {', '.join(ranges)}")
    source, lo, hi = ranges[split]
    pixels, labels = data[source]
    hi = len(pixels) if hi is None else hi
    samples = [SourceSample(f"{source}_{i:05d}", int(remap[labels[i]]), _reader(pixels, i))
               for i in range(lo, hi)]
    origin = f"{data['name']} {source} images {lo}..{hi - 1} of {Path(path).name}"
    return SplitSource(classes, {c: c for c in classes}, samples, origin)
