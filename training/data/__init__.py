"""The input pipeline: WebDataset shards on S3 or a folder -> uint8 image batches.

- ``loader``: ``build_loader`` and the epoch's plan (equal batches per rank in training, every
  sample once in evaluation, the order a pure function of (seed, epoch), exact mid-epoch resume);
- ``tarstream``: reads a shard's members from memory;
- ``storage``: S3 and local files behind one set of functions (a read that breaks is retried);
- ``transforms``: the papers' recipes, decoding with ``_jpegroi.c`` (libjpeg-turbo, region of
  interest) when it is built;
- ``batching``: batches assembled one image at a time, channels_last.
"""

from training.data.loader import (  # noqa: F401 (the package's public names)
    Manifest,
    ShardLoader,
    build_loader,
    freeze_long_lived_objects,
    plan_epoch,
    read_manifest,
    split_ranges,
)
