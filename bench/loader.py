"""Loader throughput: images/s per core of decode + augment, measured in one run.

    .venv/bin/python bench/loader.py [--images 1200] [--repeats 7] [--out bench/results]

Generates ImageNet-sized JPEGs (500x375, like a typical ImageNet photo), writes them as an
ImageFolder, as local shards and as shards on a moto S3 server started on a free loopback port,
then times, in one process on one thread (so the figures are per core):
- bare decode of the same bytes, nothing else, with each decoder at hand: PIL
  (``Image.open(...).convert("RGB")``), torchvision's ``decode_jpeg`` and depthlab's
  libjpeg-turbo extension asked for the whole image. The fastest is the baseline (the one the
  augmented pipeline's paired ratio is lowest against): the pipeline must not look good by
  beating a slow decoder;
- (a) torchvision's ImageFolder with RandomResizedCrop(224) + flip: the plain PIL path;
- (b) depthlab's loader on the local shards, same recipe ("imagenet");
- the same recipe over the same bytes in a plain loop, no loader: the paired ratio of (b) to
  it is what the loader's machinery (tar reading, shuffling, seeding, batching, memory) costs;
- (c) the same shards through the S3 server;
plus the paper's scale augmentation and the evaluation center crop on local shards.
Targets: (c) within 10% of (b); (b) at 80% or more of the fastest bare decode rate. Each
target is a ratio of two paths measured in the same round, its median over the rounds (the
range too): this machine's speed drifts by 20-30% over minutes, so the ratio of two best rates,
taken in different rounds, would swing with it. The table of rates gives each path's best.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common import (command, decode_pil, decode_torchvision, machine, paired_ratio, rounds,  # noqa: E402
                    timed, write_results)  # noqa: E402
from orchestrator.demo_data import SHAPES, render  # noqa: E402
from orchestrator.shards import build_split  # noqa: E402


def make_images(root: Path, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        k = i % classes
        img = render(rng, SHAPES[k % 3], k * 0.3, 500)[:375]
        folder = root / "train" / f"c{k:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"c{k:03d}_{i}.JPEG", quality=90)


def bare_decode_roi_whole(files: list[bytes]) -> int:
    from training.data.transforms import _jpegroi

    for data in files:
        _jpegroi.decode(data, 0, 0, 1 << 30, 1 << 30, 1)
    return len(files)


def transform_only(files: list[bytes]) -> int:
    """The loader's training recipe ("imagenet": RandomResizedCrop(224) + flip) applied to each
    of ``files`` in a loop: decode and augment without the loader around them."""
    from training.data.transforms import build_transform

    transform = build_transform("imagenet", 224, train=True)
    for data in files:
        transform(data)
    return len(files)


def imagefolder(root: Path) -> int:
    import torchvision
    from torchvision.transforms import v2

    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=v2.Compose([
        v2.PILToTensor(), v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=0)
    return sum(len(y) for _, y in loader)


def shards(url: str, augment: str = "imagenet", train: bool = True,
           steady: list | None = None, faults: list | None = None,
           constant_images: bool = False) -> int:
    """Images of one pass; ``steady`` gets the rate after the first batch, which leaves out the
    start-up (the manifest, and the samples that fill the shuffle buffer's first eighth before
    any decoding: 250, here three shards); ``faults`` the minor page faults per image.
    ``constant_images``: the transform returns one ready 224 image without looking at the
    bytes, so what is timed is the loader's machinery alone."""
    from training.data import build_loader

    loader = build_loader(url, "train", batch_size=64, image_size=224, augment=augment,
                          train=train)
    if constant_images:
        image = torch.zeros(224, 224, 3, dtype=torch.uint8).permute(2, 0, 1)
        loader.dataset.transform = lambda data: image
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    n, first, t_first = 0, 0, 0.0
    for _, y in loader:
        n += len(y)
        if not first:
            first, t_first = n, time.perf_counter()
    if steady is not None:
        steady.append((n - first) / (time.perf_counter() - t_first))
    if faults is not None:
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / n)
    return n


def start_s3():
    """moto's S3 server on a free port (the shared helper), the AWS variables pointed at it."""
    from infra.local.services import free_port, start_moto

    port = free_port()
    proc = start_moto(port, Path(tempfile.gettempdir()) / f"bench-loader-moto-{port}.log")
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    return proc


# Where the time of a region decode goes: boxes of a 500x375 image (left, top, right, bottom).
REGIONS = {"whole image": (0, 0, 500, 375), "top half": (0, 0, 500, 188),
           "bottom half": (0, 188, 500, 375), "left half": (0, 0, 250, 375),
           "16x16 at the top-left": (0, 0, 16, 16), "16x16 at the bottom-right": (484, 359, 500, 375)}


def region_costs(files: list[bytes], repeats: int) -> dict[str, float]:
    """ms per image of decoding each of ``REGIONS`` with depthlab's extension. Rows above a box
    are skipped with entropy decoding only, columns beside it too; rows below are not read."""
    from training.data.transforms import _jpegroi

    def decode(box):
        def run() -> int:
            for data in files:
                _jpegroi.decode(data, *box, 1)
            return len(files)
        return run

    rates = timed({name: decode(box) for name, box in REGIONS.items()}, repeats)
    return {name: 1000 / rate for name, rate in rates.items()}


def crop_stages(files: list[bytes], repeats: int) -> dict[str, float]:
    """ms per image of RandomResizedCrop's two stages on the same draws: decoding the crop's
    region, and resizing it to 224."""
    from training.data.transforms import RandomResizedCrop, _resized, decode_box, image_size

    rrc, rng_state = RandomResizedCrop(224), random.getstate()
    random.seed(0)
    boxes = [rrc.params(*image_size(data)) for data in files]
    random.setstate(rng_state)
    regions = [decode_box(data, image_size(data), box, 224) for data, box in zip(files, boxes)]

    def decode() -> int:
        for data, box in zip(files, boxes):
            decode_box(data, image_size(data), box, 224)
        return len(files)

    def resize() -> int:
        for region in regions:
            _resized(region, 224)
        return len(files)

    rates = timed({"decode the crop's region": decode, "resize it to 224": resize}, repeats)
    return {name: 1000 / rate for name, rate in rates.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1200)  # 12 shards: start-up costs amortised
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="depthlab-bench-") as tmp:
        root = Path(tmp) / "images"
        make_images(root, args.images)
        (root / "val").mkdir()
        for d in (root / "train").iterdir():  # a val split, so the builder has both
            (root / "val" / d.name).mkdir()
            first = next(d.iterdir())
            (root / "val" / d.name / first.name).write_bytes(first.read_bytes())
        local = str(Path(tmp) / "shards")
        build_split(root, local, "train", shard_size=100, workers=2)
        files = [f.read_bytes() for f in sorted((root / "train").rglob("*.JPEG"))]
        s3 = start_s3()
        try:
            from training.data import storage

            storage.ensure_bucket("s3://bench")
            build_split(root, "s3://bench/shards", "train", shard_size=100, workers=2)
            from training.data import transforms

            bare = {"bare_decode_pil": decode_pil, "bare_decode_torchvision": decode_torchvision}
            if transforms._jpegroi is not None:
                bare["bare_decode_depthlab_whole"] = bare_decode_roi_whole
            steady: dict[str, list[float]] = {"local": [], "s3": []}
            faults: list[float] = []
            paths = {name: (lambda fn=fn: fn(files)) for name, fn in bare.items()}
            paths["transform_only"] = lambda: transform_only(files)
            # (b) right after the decoders and (c) right after (b): the ratios pair neighbours.
            paths |= {
                "b_shards_local": lambda: shards(local, steady=steady["local"], faults=faults),
                "c_shards_s3": lambda: shards("s3://bench/shards", steady=steady["s3"]),
                "a_imagefolder_pil": lambda: imagefolder(root),
                "paper_scale_augment_local": lambda: shards(local, "imagenet_paper"),
                "eval_center_crop_local": lambda: shards(local, "imagenet", train=False),
                "loader_machinery_alone": lambda: shards(local, constant_images=True),
            }
            # One untimed round first: a process's first loader takes ~0.14 s longer to its
            # first batch, once (the collection that freezes the long-lived objects,
            # data.freeze_long_lived_objects, and first-time set-up); without this round,
            # round 1 of (b) was the slowest in each of three runs.
            per_round = rounds(paths, args.repeats, warmup=1)
            r = {name: max(rates) for name, rates in per_round.items()}
            regions = region_costs(files, args.repeats) if transforms._jpegroi is not None else {}
            stages = crop_stages(files, args.repeats)
        finally:
            from infra.local.services import stop

            stop(s3)
    # Round by round (see paired_ratio); the best rates' ratios would pair different moments.
    paired = {"s3_over_local": paired_ratio(per_round["c_shards_s3"], per_round["b_shards_local"]),
              "s3_over_local_after_first_batch": paired_ratio(steady["s3"], steady["local"]),
              **{f"augmented_over_{name}": paired_ratio(per_round["b_shards_local"], per_round[name])
                 for name in bare},
              "augmented_over_transform_only": paired_ratio(per_round["b_shards_local"],
                                                            per_round["transform_only"]),
              "local_over_imagefolder": paired_ratio(per_round["b_shards_local"],
                                                     per_round["a_imagefolder_pil"])}
    ratios = {name: p["median"] for name, p in paired.items()}
    # The fastest decoder by the same paired measure (the best rates alone swap places by chance).
    fastest = min(bare, key=lambda name: ratios[f"augmented_over_{name}"])
    paired["transform_only_over_fastest"] = paired_ratio(per_round["transform_only"],
                                                         per_round[fastest])
    ratios["transform_only_over_fastest"] = paired["transform_only_over_fastest"]["median"]
    result = {"images": args.images, "image_size": "500x375 JPEG q90", "crop": 224,
              "threads": 1, "repeats": args.repeats, "images_per_sec": r,
              "images_per_sec_per_round": per_round,
              "ratios": ratios, "ratio_ranges": paired,
              "baseline": fastest, "roi_decode": transforms._jpegroi is not None,
              "region_decode_ms": regions, "random_resized_crop_stage_ms": stages,
              "targets_met": {"s3_within_10pct": ratios["s3_over_local"] >= 0.9,
                              "augmented_at_least_80pct_of_decode":
                                  ratios[f"augmented_over_{fastest}"] >= 0.8},
              "loader_machinery_us_per_image": 1e6 / r["loader_machinery_alone"],
              "minor_faults_per_image_b": sorted(faults)[len(faults) // 2],
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    lines = ["# Loader throughput (images/s on one core)", "",
             f"`{command('bench/loader.py')}` on "
             f"{result['machine']}, {result['date']}; {args.images} JPEGs of 500x375, 224 crops, "
             f"best of {args.repeats} interleaved rounds after an untimed one. Region-of-interest decoding: "
             f"{'on' if result['roi_decode'] else 'off (training/data/_jpegroi.c not built)'}; "
             f"baseline: {fastest}.", "", "| path | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r.items()]
    def row(label: str, key: str, target: str) -> str:
        p = paired[key]
        # Three decimals against a target: 0.796 must not read as a met 0.80.
        median = f"{p['median']:.3f}" if target != "-" else f"{p['median']:.2f}"
        return f"| {label} | {median} | {p['low']:.2f}-{p['high']:.2f} | {target} |"

    lines += ["", "Ratios of two paths' rates in the same round: the median over the rounds, and "
              "the lowest and highest.", "",
              "| ratio | median | range | target |", "|---|---|---|---|",
              row("S3 / local shards", "s3_over_local", ">= 0.90"),
              row("S3 / local shards, after the first batch", "s3_over_local_after_first_batch", "-"),
              row(f"augmented (b) / fastest bare decode ({fastest})",
                  f"augmented_over_{fastest}", ">= 0.80"),
              *(row(f"augmented (b) / {name}", f"augmented_over_{name}", "-")
                for name in bare if name != fastest),
              row(f"the recipe without the loader / {fastest}", "transform_only_over_fastest", "-"),
              row("augmented (b) / the same recipe without the loader",
                  "augmented_over_transform_only", "-"),
              row("local shards (b) / ImageFolder (a)", "local_over_imagefolder", "-")]
    met = result["targets_met"]
    lines += ["", f"Targets met: S3 within 10% of local {'yes' if met['s3_within_10pct'] else 'no'}; "
              f"augmented at 80% of the fastest bare decode "
              f"{'yes' if met['augmented_at_least_80pct_of_decode'] else 'no'}."]
    lines += ["", f"The loader's machinery alone (tar reading, shuffling, seeding, batching; a "
              f"transform that returns a ready image): {result['loader_machinery_us_per_image']:.0f} "
              f"us per image at best. (b) took {result['minor_faults_per_image_b']:.1f} minor page "
              f"faults per image (the median over the rounds)."]
    lines += ["", "RandomResizedCrop(224) per image, in stages (ms, the same crops):", "",
              "| stage | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in stages.items()]
    if regions:
        lines += ["", "What a region costs (ms per image, depthlab's decoder): the rows above a box",
                  "still need their entropy decoding, the columns beside it too; the rows below",
                  "are never read.", "", "| region | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in regions.items()]
    write_results(args.out, "loader", result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
