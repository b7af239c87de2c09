"""Build WebDataset shards from ImageNet or CIFAR, to a local folder or s3://bucket/prefix.

    python pipelines/build_shards.py SOURCE DEST [--split train|val|test] [--shard-size 1000]
                                     [--holdout N]

SOURCE is one of:
- an ImageNet-layout root: ``train/<wnid>/*.JPEG`` and ``val/`` (in class folders, or flat with
  ILSVRC2012_devkit_t12.tar.gz, val_labels.txt or LOC_val_solution.csv beside it);
- a folder holding the official ILSVRC2012 archives (ILSVRC2012_img_train.tar,
  ILSVRC2012_img_val.tar and the devkit), read directly without extracting;
- CIFAR-10 or CIFAR-100 as torchvision downloads them: ``cifar-10-python.tar.gz`` /
  ``cifar-100-python.tar.gz`` (or the folder holding one, or the extracted folder). The pixels
  are stored losslessly as PNGs; the test batch is ``val``. ``--holdout 5000`` makes [P1]'s
  tuning split instead: ``train`` = the first 45,000 training images, ``val`` = the last 5,000,
  ``test`` = the test batch.
DEST (a folder or s3://bucket/prefix) receives ``DEST/<split>/`` for each split, with its
shards and a ``manifest.json`` written last. A re-run skips shards already there intact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.endpoints import apply_local_stack_defaults  # noqa: E402
from orchestrator.shards import build_split  # noqa: E402
from training.data.storage import StorageError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="dataset root or folder of ILSVRC2012 archives")
    p.add_argument("dest", help="local folder or s3://bucket/prefix")
    p.add_argument("--split", choices=("train", "val", "test"), action="append",
                   help="split(s) to build (default: train and val, and test with --holdout)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-class shuffle")
    p.add_argument("--workers", type=int, default=8, help="shards written in parallel")
    p.add_argument("--holdout", type=int, default=0,
                   help="CIFAR: hold out the last N training images as val (the test batch "
                        "becomes test); [P1] uses 5000")
    args = p.parse_args(argv)
    apply_local_stack_defaults()
    try:
        default = ("train", "val", "test") if args.holdout else ("train", "val")
        for split in args.split or default:
            m = build_split(args.source, args.dest, split, shard_size=args.shard_size,
                            seed=args.seed, workers=args.workers, holdout=args.holdout)
            st = m["stats"]
            print(f"{split}: {m['num_samples']} samples in {len(m['shards'])} shards, "
                  f"{len(m['classes'])} classes, from {m['source']}; {st['written']} shards "
                  f"written, {st['already_there']} already there; {st['jpg']} JPEG and "
                  f"{st['png']} PNG images, {st['converted']} converted to RGB, {st['bad']} "
                  f"undecodable skipped")
    except (FileNotFoundError, ValueError, StorageError) as exc:
        print(f"build_shards: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
