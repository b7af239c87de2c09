"""Turning an ImageNet-layout folder into WebDataset shards on a local folder or S3.

One sample is ``<key>.jpg`` (the original JPEG bytes, never re-encoded) and ``<key>.cls`` (the
class index as ASCII). The class index is the position of the class id in sorted order, as
torchvision's ImageFolder numbers classes. Samples are shuffled across classes with a seed, so
every shard mixes classes and a loader that reads a few shards still sees all of them.
``manifest.json`` is written last: its presence means the split is complete.

Re-running skips shards already present with the expected size (the shards are a pure function
of the source listing, the seed and the shard size), so an interrupted upload resumes.
"""

from __future__ import annotations

import io
import json
import random
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from training import storage

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int

    @property
    def key(self) -> str:
        # WebDataset splits a member name at its first dot: the key must contain none.
        return self.path.stem.replace(".", "_")


def scan_class_folders(split_dir: Path) -> tuple[list[str], list[Sample]]:
    """``split_dir/<class id>/*.JPEG`` -> (sorted class ids, samples)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is not a folder of class folders")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{split_dir} holds no class folders (expected <class id>/*.JPEG)")
    samples = [
        Sample(f, label)
        for label, cid in enumerate(classes)
        for f in sorted((split_dir / cid).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise FileNotFoundError(f"{split_dir} holds no images")
    return classes, samples


def read_class_names(root: Path) -> dict[str, str]:
    """``classes.txt`` / LOC_synset_mapping.txt style: ``<id> <name...>`` per line, if present."""
    for name in ("classes.txt", "LOC_synset_mapping.txt"):
        path = root / name
        if path.is_file():
            pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
            return {p[0]: (p[1] if len(p) > 1 else p[0]) for p in pairs}
    return {}


def plan_shards(samples: list[Sample], shard_size: int, seed: int) -> list[list[Sample]]:
    order = list(samples)
    random.Random(seed).shuffle(order)
    return [order[i: i + shard_size] for i in range(0, len(order), shard_size)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(samples: list[Sample]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            _add(tar, f"{s.key}.jpg", s.path.read_bytes())
            _add(tar, f"{s.key}.cls", str(s.label).encode())
    return buf.getvalue()


class Progress:
    """A one-line progress bar on a terminal, a line per 10% in logs."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.tty = sys.stderr.isatty()
        self.t0, self._last_decile = time.monotonic(), -1

    def advance(self, n: int = 1) -> None:
        self.done += n
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        line = f"{self.label}: {self.done}/{self.total} shards ({rate:.1f}/s)"
        if self.tty:
            print("\r" + line, end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)
        elif (decile := 10 * self.done // max(self.total, 1)) != self._last_decile:
            self._last_decile = decile
            print(line, file=sys.stderr, flush=True)


def build_split(source: Path, dest: str, split: str, *, shard_size: int = 1000, seed: int = 0,
                workers: int = 8) -> dict:
    """Write ``dest/split/shard-NNNNNN.tar`` and then ``dest/split/manifest.json``; return it."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    classes, samples = scan_class_folders(source / split)
    names = read_class_names(source)
    shards = plan_shards(samples, shard_size, seed)
    split_url = storage.join(dest, split)
    progress = Progress(len(shards), f"{split} -> {split_url}")
    stats = {"uploaded": 0, "kept": 0}

    def one(index: int) -> dict:
        name = f"shard-{index:06d}.tar"
        data = shard_bytes(shards[index])
        url = storage.join(split_url, name)
        if storage.exists(url) == len(data):
            stats["kept"] += 1
        else:
            storage.write_bytes(url, data)
            stats["uploaded"] += 1
        progress.advance()
        return {"name": name, "num_samples": len(shards[index]), "bytes": len(data)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        entries = list(pool.map(one, range(len(shards))))
    manifest = {
        "format": "webdataset",
        "split": split,
        "num_samples": len(samples),
        "shards": entries,
        "classes": classes,
        "class_names": {c: names[c] for c in classes if c in names},
        "seed": seed,
        "shard_size": shard_size,
    }
    storage.write_bytes(storage.join(split_url, "manifest.json"),
                        json.dumps(manifest, indent=1).encode())
    manifest["stats"] = stats
    return manifest
