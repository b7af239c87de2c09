"""Build WebDataset shards from an ImageNet-layout folder, to a local folder or s3://bucket/prefix.

    python pipelines/build_shards.py SOURCE DEST [--split train|val] [--shard-size 1000]

SOURCE is a dataset root: ``train/<wnid>/*.JPEG`` and ``val/`` (in class folders, or flat with
ILSVRC2012_devkit_t12.tar.gz, val_labels.txt or LOC_val_solution.csv beside it), or a folder
holding the official ILSVRC2012 archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and
the devkit), read directly without extracting. DEST (a folder or s3://bucket/prefix) receives
``DEST/train/`` and ``DEST/val/``, each with its shards and a ``manifest.json`` written last.
A re-run skips shards already there intact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.endpoints import apply_local_stack_defaults  # noqa: E402
from orchestrator.shards import build_split  # noqa: E402
from training.storage import StorageError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="dataset root or folder of ILSVRC2012 archives")
    p.add_argument("dest", help="local folder or s3://bucket/prefix")
    p.add_argument("--split", choices=("train", "val"), action="append",
                   help="split(s) to build (default: both)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-class shuffle")
    p.add_argument("--workers", type=int, default=8, help="shards written in parallel")
    args = p.parse_args(argv)
    apply_local_stack_defaults()
    try:
        for split in args.split or ("train", "val"):
            m = build_split(args.source, args.dest, split, shard_size=args.shard_size,
                            seed=args.seed, workers=args.workers)
            st = m["stats"]
            print(f"{split}: {m['num_samples']} samples in {len(m['shards'])} shards, "
                  f"{len(m['classes'])} classes, from {m['source']}; {st['written']} shards "
                  f"written, {st['already_there']} already there; {st['converted']} images "
                  f"converted to RGB JPEG, {st['bad']} undecodable skipped")
    except (FileNotFoundError, ValueError, StorageError) as exc:
        print(f"build_shards: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
