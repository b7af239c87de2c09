"""Turning a dataset (see ``orchestrator.sources``) into WebDataset shards on a folder or S3.

One sample is ``<key>.jpg`` (the original JPEG bytes, never re-encoded) or, for a lossless
source such as CIFAR's pixels (``orchestrator.cifar_source``), ``<key>.png``, and ``<key>.cls``
(the class index as ASCII). The class index is the position of the class id in sorted order, as
torchvision's ImageFolder numbers classes. Samples are shuffled across classes with a seed, so
every shard mixes classes and a loader that reads a few shards still sees all of them.
``manifest.json`` is written last: its presence means the split is complete.

Real ImageNet holds a few files that are not what their name says: 22 CMYK JPEGs and one PNG
named .JPEG in the training set. A JPEG that is not RGB or greyscale is converted to an RGB JPEG
(it was lossy already); any other format is stored as a PNG (RGB or greyscale PNGs as they are,
others converted to RGB without loss); both are counted in the manifest. Files that do not
decode at all are skipped and counted.

Re-running skips shards already present with the expected size (the shards are a pure function
of the source listing, the seed and the shard size), so an interrupted upload resumes.
"""

from __future__ import annotations

import io
import json
import random
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from orchestrator.cifar_source import find_cifar, load_cifar_split
from orchestrator.sources import SourceSample, load_split
from training.data import storage


def plan_shards(samples: list[SourceSample], shard_size: int, seed: int) -> list[list[SourceSample]]:
    order = sorted(samples, key=lambda s: s.key)  # independent of listing order
    random.Random(seed).shuffle(order)
    return [order[i: i + shard_size] for i in range(0, len(order), shard_size)]


def stored_image(data: bytes) -> tuple[bytes, str, str]:
    """``(bytes to store, extension, what was done)``: "kept", "converted" or "bad".

    JPEGs stay JPEGs and everything else becomes a PNG, so a lossless source is never
    re-encoded lossily. Only the header is parsed for files that are fine, so originals cost
    no decode.
    """
    try:
        image = Image.open(io.BytesIO(data))
        ext = "jpg" if image.format == "JPEG" else "png"
        if image.format in ("JPEG", "PNG") and image.mode in ("RGB", "L"):
            return data, ext, "kept"
        image = image.convert("RGB")
    except Exception:
        return b"", "", "bad"
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95) if ext == "jpg" else image.save(out, "PNG")
    return out.getvalue(), ext, "converted"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(samples: list[SourceSample]) -> tuple[bytes, dict]:
    """One shard's tar bytes, and counts of kept, converted and bad (skipped) images."""
    counts = {"kept": 0, "converted": 0, "bad": 0, "jpg": 0, "png": 0}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            data, ext, what = stored_image(s.read())
            counts[what] += 1
            if what == "bad":
                print(f"  skipping undecodable image {s.key}", file=sys.stderr)
                continue
            counts[ext] += 1
            _add(tar, f"{s.key}.{ext}", data)
            _add(tar, f"{s.key}.cls", str(s.label).encode())
    return buf.getvalue(), counts


class ShardProgress:
    """A one-line progress bar on a terminal, a line per 10% in logs."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.tty = sys.stderr.isatty()
        self.t0, self._last_decile = time.monotonic(), -1
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            rate = self.done / max(time.monotonic() - self.t0, 1e-9)
            line = f"{self.label}: {self.done}/{self.total} shards ({rate:.1f}/s)"
            if self.tty:
                print("\r" + line, end="" if self.done < self.total else "\n", file=sys.stderr,
                      flush=True)
            elif (decile := 10 * self.done // max(self.total, 1)) != self._last_decile:
                self._last_decile = decile
                print(line, file=sys.stderr, flush=True)


def _train_classes(dest: str) -> list[str] | None:
    """Class ids of an already built training split, so validation labels line up with them."""
    url = storage.join(dest, "train", "manifest.json")
    if not storage.exists(url):
        return None
    return json.loads(storage.read_bytes(url))["classes"]


def build_split(source: Path, dest: str, split: str, *, shard_size: int = 1000, seed: int = 0,
                workers: int = 8, holdout: int = 0) -> dict:
    """Write ``dest/split/shard-NNNNNN.tar`` and then ``dest/split/manifest.json``; return it.

    ``holdout``: for a CIFAR archive, the last N training images become ``val`` and the test
    batch ``test`` ([P1]'s 45k/5k tuning split)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    cifar = find_cifar(Path(source))
    if cifar:
        src = load_cifar_split(cifar[1], split, holdout=holdout)
    elif holdout:
        raise ValueError(f"--holdout applies to the CIFAR archives; {source} is not one")
    else:
        src = load_split(Path(source), split,
                         train_classes=_train_classes(dest) if split != "train" else None)
    shards = plan_shards(src.samples, shard_size, seed)
    split_url = storage.join(dest, split)
    progress = ShardProgress(len(shards), f"{split} -> {split_url}")
    lock = threading.Lock()
    stats = {"written": 0, "already_there": 0, "kept": 0, "converted": 0, "bad": 0, "jpg": 0,
             "png": 0}

    def one(index: int) -> dict:
        name = f"shard-{index:06d}.tar"
        data, counts = shard_bytes(shards[index])
        url = storage.join(split_url, name)
        digest = storage.sha256(data)
        # By content, not size: a tar pads to 512-byte blocks, so images that changed a little
        # often leave a shard's size as it was.
        present = storage.stored_sha256(url) == digest
        if not present:
            storage.write_bytes(url, data)
        with lock:
            stats["already_there" if present else "written"] += 1
            for k, v in counts.items():
                stats[k] += v
        progress.advance()
        return {"name": name, "num_samples": counts["kept"] + counts["converted"], "bytes": len(data),
                "sha256": digest}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        entries = [e for e in pool.map(one, range(len(shards))) if e["num_samples"]]
    manifest = {
        "format": "webdataset",
        "split": split,
        "num_samples": sum(e["num_samples"] for e in entries),
        "shards": entries,
        "classes": src.classes,
        "class_names": src.class_names,
        "source": src.origin,
        "converted": stats["converted"],
        "skipped": stats["bad"],
        "image_formats": {"jpg": stats["jpg"], "png": stats["png"]},
        "seed": seed,
        "shard_size": shard_size,
    }
    storage.write_bytes(storage.join(split_url, "manifest.json"),
                        json.dumps(manifest, indent=1).encode())
    manifest["stats"] = stats
    return manifest
