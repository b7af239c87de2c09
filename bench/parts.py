"""Does each hand-written part of the input pipeline earn its place? The loader with and
without it, at ImageNet sizes, in one run.

    .venv/bin/python bench/parts.py [--images 1000] [--repeats 7]

On 500x375 JPEGs in local shards (and on a moto S3 server for the S3 reader), one process and
one thread, RandomResizedCrop(224) + flip, the loader's images/s in interleaved rounds with
each part swapped for what the standard library or a package gives:
- the tar reader (``training/data/tarstream.py``)        -> ``tarfile`` over the shard's bytes;
- batches filled in place (``training/data/batching.py``) -> each image made, then copied in;
- the resize kernel called with ``out=`` (private API)   -> ``F.interpolate``, then a copy;
- the region-of-interest decoder (``_jpegroi.c``)        -> PIL (with its DCT-scaled draft);
- the S3 stream with ranged resume (``storage.py``)      -> boto3's ``get_object`` read whole.
A part stays where taking it out costs 10% or more of the loader's rate (the paired ratio's
median over the rounds); below that the simpler way is the better code. Writes
``bench/results/parts.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

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
def images_copied_in():
    """Batches assembled from images made on their own: the transforms get no slot."""
    from training.data import loader

    build = loader.build_transform

    def without_shape(*args, **kwargs):
        t = build(*args, **kwargs)
        return lambda data, out=None: t(data)  # no ``shape``: BatchBuilder copies each image
    loader.build_transform = without_shape
    try:
        yield
    finally:
        loader.build_transform = build


@contextlib.contextmanager
def public_resize():
    """The resize through ``F.interpolate`` (public), its result copied into the slot."""
    from training.data import transforms

    saved = transforms._resized

    def resized(x, size, out=None):
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) == hw:
            return x if out is None else out.copy_(x)
        y = F.interpolate(transforms._batch_of_one(x), size=hw, mode="bilinear",
                          antialias=True, align_corners=False)[0]
        return y if out is None else out.copy_(y)
    transforms._resized = resized
    try:
        yield
    finally:
        transforms._resized = saved


@contextlib.contextmanager
def without_extension():
    from training.data import transforms

    saved = transforms._jpegroi
    transforms._jpegroi = None
    try:
        yield
    finally:
        transforms._jpegroi = saved


@contextlib.contextmanager
def boto3_whole_reads():
    """S3 shards read with one ``get_object`` each, no resume on a broken connection."""
    from training.data import storage

    saved = storage.read_buffer

    def read_buffer(url):
        if not storage.is_s3(url):
            return saved(url)
        bucket, key = storage.split_s3(url)
        return storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    storage.read_buffer = read_buffer
    try:
        yield
    finally:
        storage.read_buffer = saved


def one_pass(url: str, swap=None) -> int:
    from training.data import build_loader

    with swap() if swap else contextlib.nullcontext():
        loader = build_loader(url, "train", batch_size=64, image_size=224, augment="imagenet")
        return sum(len(y) for _, y in loader)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    from infra.local.services import free_port, start_moto, stop
    from training.data import storage, transforms

    with tempfile.TemporaryDirectory(prefix="depthlab-parts-") as tmp:
        tmp = Path(tmp)
        make_images(tmp / "images", args.images)
        local = str(tmp / "shards")
        build_split(tmp / "images", local, "train", shard_size=200, workers=2)
        port = free_port()
        server = start_moto(port, tmp / "moto.log")
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        try:
            storage.ensure_bucket("s3://bench")
            build_split(tmp / "images", "s3://bench/shards", "train", shard_size=200, workers=2)
            paths = {
                "loader, local shards": lambda: one_pass(local),
                "tar reader -> tarfile": lambda: one_pass(local, tarfile_reader),
                "in-place batches -> images copied in": lambda: one_pass(local, images_copied_in),
                "private resize kernel -> F.interpolate + copy": lambda: one_pass(local, public_resize),
                "region-of-interest decoder -> PIL": lambda: one_pass(local, without_extension),
                "loader, S3 shards": lambda: one_pass("s3://bench/shards"),
                "S3 stream with resume -> boto3 get_object": lambda: one_pass("s3://bench/shards", boto3_whole_reads),
            }
            if transforms._jpegroi is None:
                paths.pop("region-of-interest decoder -> PIL")
            rates = rounds(paths, args.repeats, warmup=1)
        finally:
            stop(server)
    baseline = {name: "loader, S3 shards" if name.startswith("S3") else "loader, local shards"
                for name in paths}
    rows = []
    for name in paths:
        if name.startswith("loader"):
            continue
        ratio = paired_ratio(rates[name], rates[baseline[name]])
        cost = 1 - ratio["median"]
        rows.append({"part": name, "rate": max(rates[name]), "ratio": ratio,
                     "cost_of_removing": cost, "keep": cost >= KEEP_IF_COSTS})
    result = {"images": args.images, "repeats": args.repeats, "machine": machine(),
              "rates": {k: max(v) for k, v in rates.items()}, "parts": rows}
    lines = ["# Does each hand-written part earn its place?", "",
             f"`{command('bench/parts.py')}`, {machine()}; {args.images} JPEGs of 500x375, "
             f"RandomResizedCrop(224) + flip, one thread, best of {args.repeats} interleaved rounds; "
             f"a part stays where taking it out costs {KEEP_IF_COSTS:.0%} or more of the loader's "
             "rate (the median over rounds of the paired ratio).", "",
             "| loader | images/s |", "|---|---|",
             *[f"| {k} | {max(v):,.0f} |" for k, v in rates.items() if k.startswith("loader")], "",
             "| part -> its replacement | images/s | without / with (median, range) | cost of removing it | verdict |",
             "|---|---|---|---|---|",
             *[f"| {r['part']} | {r['rate']:,.0f} | {r['ratio']['median']:.3f} "
               f"({r['ratio']['low']:.2f}-{r['ratio']['high']:.2f}) | {r['cost_of_removing']:+.1%} | "
               f"{'keep' if r['keep'] else 'replace'} |" for r in rows]]
    write_results(args.out, "parts", result, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
