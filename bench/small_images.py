"""Loader throughput on tiny images (the CPU study's data), measured in one run.

    .venv/bin/python bench/small_images.py [--per-class 400] [--repeats 3] [--out bench/results]

Generates the CPU study's 12-class 16x16 JPEG data (``orchestrator.demo_data``), writes it as
local shards, then times one training epoch's data pass on one thread (images/s):
- depthlab: ``training.data.build_loader`` with the ``cifar`` recipe (pad 2, crop, flip), batch 128;
- stock webdataset: ``webdataset.WebDataset`` over the same shards, PIL decode, torchvision's
  RandomCrop(16, padding=2) + RandomHorizontalFlip, batch 128: what one writes with stock tools;
and the per-image JPEG decode alone: PIL (``Image.open(...).convert("RGB")``), torchvision's
``decode_jpeg``, and ``training.data.transforms.decode_rgb`` (depthlab's libjpeg-turbo extension
asked for the whole image; PIL where the extension is not built).
On images this small the per-sample overhead of tar parsing and PIL, not the pixels, sets the
rate: that is what depthlab's tar reader and tensor transforms remove.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from common import command, decode_pil, decode_torchvision, machine, timed, write_results  # noqa: E402
from orchestrator.demo_data import generate  # noqa: E402
from orchestrator.shards import build_split  # noqa: E402


def depthlab_epoch(url: str) -> int:
    from training.data import build_loader

    loader = build_loader(url, "train", batch_size=128, image_size=16, augment="cifar")
    return sum(len(y) for _, y in loader)


def webdataset_epoch(url: str, shards: list[str]) -> int:
    import webdataset as wds
    from torchvision.transforms import v2

    aug = v2.Compose([v2.PILToTensor(), v2.RandomCrop(16, padding=2), v2.RandomHorizontalFlip()])
    ds = (wds.WebDataset([str(Path(url) / "train" / s) for s in shards], shardshuffle=False)
          .decode("pil").to_tuple("jpg", "cls").map_tuple(aug, int).batched(128))
    return sum(len(y) for _, y in ds)


def decode_depthlab(files: list[bytes]) -> int:
    """Decode only, as the CIFAR recipe does: ``decode_rgb``."""
    from training.data.transforms import decode_rgb

    for data in files:
        decode_rgb(data)
    return len(files)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="depthlab-bench-") as tmp:
        images = generate(Path(tmp) / "images", num_classes=12, train_per_class=args.per_class,
                          val_per_class=10)
        url = str(Path(tmp) / "shards")
        build_split(images, url, "train", workers=2)
        shards = json.loads((Path(url) / "train" / "manifest.json").read_text())["shards"]
        files = [f.read_bytes() for f in sorted((images / "train").rglob("*.JPEG"))]
        r = timed({
            "depthlab_loader": lambda: depthlab_epoch(url),
            "stock_webdataset": lambda: webdataset_epoch(url, [s["name"] for s in shards]),
            "decode_pil": lambda: decode_pil(files),
            "decode_torchvision": lambda: decode_torchvision(files),
            "decode_depthlab": lambda: decode_depthlab(files),
        }, args.repeats)
    ratios = {"depthlab_over_webdataset": r["depthlab_loader"] / r["stock_webdataset"],
              "torchvision_over_pil_decode": r["decode_torchvision"] / r["decode_pil"],
              "depthlab_over_torchvision_decode": r["decode_depthlab"] / r["decode_torchvision"]}
    result = {"images": len(files), "image_size": "16x16 JPEG q90", "threads": 1,
              "repeats": args.repeats, "images_per_sec": r, "ratios": ratios,
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    lines = ["# Loader throughput on 16x16 images (images/s on one core)", "",
             f"`{command('bench/small_images.py')}` on "
             f"{result['machine']}, {result['date']}; {len(files)} JPEGs of 16x16 (the CPU study's "
             f"data), batch 128, best of {args.repeats} interleaved rounds.", "", "| path | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r.items()]
    lines += ["", "| ratio | value |", "|---|---|",
              f"| depthlab loader / stock webdataset | {ratios['depthlab_over_webdataset']:.2f} |",
              f"| torchvision decode / PIL decode | {ratios['torchvision_over_pil_decode']:.2f} |",
              f"| depthlab decode / torchvision decode | "
              f"{ratios['depthlab_over_torchvision_decode']:.2f} |"]
    write_results(args.out, "small_images", result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
