"""Does each hand-written part of the input pipeline earn its place? The loader with and
without it, on the two kinds of data the papers train on, in one run.

    .venv/bin/python bench/parts.py [--images 1000] [--cifar-images 5000] [--repeats 9] [--clock cpu]

One process and one thread; the loader's images per second of this process's CPU time (``--clock
wall`` for wall time) in interleaved rounds, with each part swapped for what the standard library
or a package gives. CPU time, because the question is the work each way takes, and on a machine
shared with other jobs wall time swings by a third from one pass to the next. The data:
- ImageNet-like: 500x375 JPEGs in local shards, RandomResizedCrop(224) + flip, batch 64;
- CIFAR-like: 32x32 lossless PNGs (a CIFAR-10 archive laid out as the official one, stored as
  ``orchestrator.cifar_source`` stores it), pad-crop-flip, batch 128: here the per-sample
  overhead, not the pixels, sets the rate.
The parts:
- the tar reader (``training/data/tarstream.py``)        -> ``tarfile`` over the shard's bytes;
- the region-of-interest decoder (``_jpegroi.c``)        -> PIL (with its DCT-scaled draft).
A part stays where taking it out costs 10% or more of the loader's rate on either kind of data
(the paired ratio's median over the rounds); below that the simpler way is the better code.
Writes ``bench/results/parts.md`` and ``.json``. Three parts this measured out are gone (batches
filled in place, a private resize kernel, an S3 stream with ranged resume):
``bench/results/parts-removed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from common import command, machine, paired_ratio, rounds, write_results  # noqa: E402
from loader import make_images  # noqa: E402
from orchestrator.shards import build_split  # noqa: E402

KEEP_IF_COSTS = 0.10


@contextlib.contextmanager
def tarfile_reader():
    """The loader reading its shards with ``tarfile`` (members copied out, as tarfile does)."""
    from training.data import tarstream

    def members(shard, copy=True):
        with tarfile.open(fileobj=io.BytesIO(shard), mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    yield m.name, tar.extractfile(m).read()

    saved = tarstream.iter_members
    tarstream.iter_members = members
    try:
        yield
    finally:
        tarstream.iter_members = saved


@contextlib.contextmanager
def without_extension():
    from training.data import transforms

    saved = transforms._jpegroi
    transforms._jpegroi = None
    try:
        yield
    finally:
        transforms._jpegroi = saved


def make_cifar(folder: Path, n: int) -> Path:
    """A CIFAR-10 archive folder of ``n`` training images laid out as the official one: the
    generated shapes at 32x32, so the PNGs compress like photographs, not like noise."""
    import pickle

    import numpy as np
    from PIL import Image

    from orchestrator.demo_data import SHAPES, render

    rng = np.random.default_rng(0)
    top = folder / "cifar-10-batches-py"
    top.mkdir(parents=True)
    per_batch = max(1, n // 5)

    def batch(count: int) -> dict:
        rows, labels = [], []
        for i in range(count):
            k = i % 10
            img = Image.fromarray(render(rng, SHAPES[k % 3], k * 0.3, 64)).resize((32, 32))
            rows.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).reshape(-1))
            labels.append(k)
        return {b"data": np.stack(rows), b"labels": labels}

    for i in range(1, 6):
        (top / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (top / "test_batch").write_bytes(pickle.dumps(batch(10)))
    (top / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)]}))
    return top


def one_pass(url: str, kind: str, swap=None) -> int:
    from training.data import build_loader

    kwargs = ({"batch_size": 64, "image_size": 224, "augment": "imagenet"} if kind == "imagenet"
              else {"batch_size": 128, "image_size": 32, "augment": "cifar"})
    with swap() if swap else contextlib.nullcontext():
        loader = build_loader(url, "train", **kwargs)
        return sum(len(y) for _, y in loader)


# (part -> its replacement, the swap, the data it is measured on)
PARTS = [
    ("tar reader -> tarfile", tarfile_reader, ("imagenet", "cifar")),
    ("region-of-interest decoder -> PIL", without_extension, ("imagenet",)),
]
DATA = {"imagenet": "ImageNet-like, local shards", "cifar": "CIFAR-like, local shards"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--cifar-images", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    from training.data import transforms

    parts = [part for part in PARTS
             if part[1] is not without_extension or transforms._jpegroi is not None]
    with tempfile.TemporaryDirectory(prefix="depthlab-parts-") as tmp:
        tmp = Path(tmp)
        make_images(tmp / "images", args.images)
        urls = {"imagenet": str(tmp / "shards"), "cifar": str(tmp / "cifar-shards")}
        build_split(tmp / "images", urls["imagenet"], "train", shard_size=200, workers=2)
        build_split(make_cifar(tmp / "cifar", args.cifar_images), urls["cifar"], "train",
                    shard_size=1000, workers=2)
        paths = {f"loader, {DATA[k]}": (lambda k=k: one_pass(urls[k], k)) for k in DATA}
        for name, swap, data in parts:
            for k in data:
                paths[f"{name} | {DATA[k]}"] = lambda k=k, swap=swap: one_pass(urls[k], k, swap)
        rates = rounds(paths, args.repeats, warmup=1,
                       clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    rows = []
    for name, _, data in parts:
        for k in data:
            ratio = paired_ratio(rates[f"{name} | {DATA[k]}"], rates[f"loader, {DATA[k]}"])
            rows.append({"part": name, "data": DATA[k], "rate": max(rates[f"{name} | {DATA[k]}"]),
                         "ratio": ratio, "cost_of_removing": 1 - ratio["median"]})
    verdict = {name: max(r["cost_of_removing"] for r in rows if r["part"] == name) >= KEEP_IF_COSTS
               for name, _, _ in parts}
    result = {"images": args.images, "cifar_images": args.cifar_images, "repeats": args.repeats,
              "clock": args.clock,
              "machine": machine(), "rates": {k: max(v) for k, v in rates.items()}, "parts": rows,
              "keep": verdict}
    lines = ["# Does each hand-written part earn its place?", "",
             f"`{command('bench/parts.py')}`, {machine()}; one thread, images per "
             f"{'CPU' if args.clock == 'cpu' else 'wall'}-second, best of {args.repeats} "
             f"interleaved rounds. ImageNet-like: {args.images} JPEGs of 500x375, "
             f"RandomResizedCrop(224) + flip, batch 64; CIFAR-like: {args.cifar_images} PNGs of "
             "32x32, pad-crop-flip, batch 128. A part stays where taking it out costs "
             f"{KEEP_IF_COSTS:.0%} or more of the loader's rate on either kind of data (the median "
             "over rounds of the paired ratio).", "",
             f"| loader | images/{args.clock} s |", "|---|---|",
             *[f"| {k} | {max(v):,.0f} |" for k, v in rates.items() if k.startswith("loader")], "",
             f"| part -> its replacement | data | images/{args.clock} s | without / with (median, range) | "
             "cost of removing it | verdict |",
             "|---|---|---|---|---|---|",
             *[f"| {r['part']} | {r['data']} | {r['rate']:,.0f} | {r['ratio']['median']:.3f} "
               f"({r['ratio']['low']:.2f}-{r['ratio']['high']:.2f}) | {r['cost_of_removing']:+.1%} | "
               f"{'keep' if verdict[r['part']] else 'replace'} |" for r in rows]]
    write_results(args.out, "parts", result, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
