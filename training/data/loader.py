"""Streaming WebDataset shards (local folder or s3://) into ``(images, labels)`` batches.

A split is ``<data_url>/<split>/`` holding ``shard-*.tar`` and ``manifest.json`` (shard names and
sample counts). Because the manifest gives every shard's sample count, the whole epoch is planned
up front as a pure function of (seed, epoch, rank, world size): each rank and each loader worker
knows exactly which samples it reads before it opens a shard. That is what makes the guarantees
below exact rather than approximate.

Training: the shards are put in a seeded order for the epoch and concatenated; rank r takes the
r-th of ``world_size`` equal slices, each a whole number of batches. The remainder (fewer than
``world_size * batch_size`` samples) is dropped for that epoch only: the next epoch's shard order
moves different samples to the tail. Within a rank, a seeded shuffle buffer mixes the samples.
Evaluation: the samples are split into contiguous slices of nearly equal size, one per rank, and
every sample is read exactly once; the last batch of a rank may be short.

Images are decoded to uint8 tensors in the loader workers; normalisation happens on the device.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass

import torch

from training.data import storage, tarstream
from training.data.batching import BatchBuilder
from training.data.transforms import build_transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    split: str
    shards: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)


def read_manifest(data_url: str, split: str) -> Manifest:
    url = storage.join(data_url, split, "manifest.json")
    try:
        raw = json.loads(storage.read_bytes(url))
    except storage.StorageError as exc:
        raise storage.StorageError(
            f"no usable manifest for split {split!r}: {exc}. Build the shards first "
            f"(python pipelines/build_shards.py SOURCE {data_url})"
        ) from None
    except json.JSONDecodeError as exc:
        raise storage.StorageError(f"{url} is not valid JSON: {exc}") from None
    shards = raw.get("shards") or []
    if not shards:
        raise storage.StorageError(f"{url} lists no shards")
    return Manifest(
        split=split,
        shards=tuple(s["name"] for s in shards),
        counts=tuple(int(s["num_samples"]) for s in shards),
        classes=tuple(raw.get("classes", ())),
    )


# A read of samples [start, stop) of shard number `shard`, in the shard's own order.
Range = tuple[int, int, int]


def _slice_ranges(order: list[int], counts, lo: int, hi: int) -> list[Range]:
    """The pieces of the concatenated shards (in ``order``) covering global samples [lo, hi)."""
    out, offset = [], 0
    for s in order:
        n = counts[s]
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            out.append((s, a - offset, b - offset))
        offset += n
        if offset >= hi:
            break
    return out


def plan_epoch(counts, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int,
               train: bool) -> list[Range]:
    """Which samples this rank reads this epoch: a pure function of its arguments."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = sum(counts)
    order = list(range(len(counts)))
    if train:
        random.Random(f"{seed}/{epoch}/shards").shuffle(order)
        per_rank = (total // world_size) // batch_size * batch_size
        if per_rank == 0:
            raise ValueError(
                f"{total} training samples cannot give each of {world_size} ranks one full "
                f"batch of {batch_size}"
            )
        lo = rank * per_rank
        return _slice_ranges(order, counts, lo, lo + per_rank)
    base, extra = divmod(total, world_size)
    lo = rank * base + min(rank, extra)
    return _slice_ranges(order, counts, lo, lo + base + (1 if rank < extra else 0))


def split_ranges(ranges: list[Range], parts: int, part: int, batch_size: int) -> list[Range]:
    """Part ``part`` of ``parts`` of a rank's ranges, cut at batch boundaries (loader workers)."""
    total = sum(b - a for _, a, b in ranges)
    nbatches = -(-total // batch_size)
    per, extra = divmod(nbatches, parts)
    first_batch = part * per + min(part, extra)
    lo = first_batch * batch_size
    hi = min(total, lo + (per + (1 if part < extra else 0)) * batch_size)
    out, offset = [], 0
    for s, a, b in ranges:
        n = b - a
        x, y = max(lo, offset), min(hi, offset + n)
        if x < y:
            out.append((s, a + x - offset, a + y - offset))
        offset += n
    return out


def prefetched(urls: list[str]):
    """``(url, buffer)`` for each url, the next shard downloading while this one is decoded.

    One background thread reads whole shards into memory (downloads an S3 object, maps a local
    file: ``storage.read_buffer``), at most one ahead of the consumer, so network latency (and a
    slow S3 server or disk) overlaps with decoding.
    """
    ahead: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch():
        for url in urls:
            if stop.is_set():
                return
            try:
                item = (url, storage.read_buffer(url))
            except Exception as exc:  # handed to the consumer, raised there
                item = (url, exc)
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=fetch, name="shard-prefetch", daemon=True)
    thread.start()
    try:
        for _ in urls:
            url, item = ahead.get()
            if isinstance(item, Exception):
                raise item
            yield url, item
    finally:
        stop.set()


def iter_tar_samples(shard, *, copy: bool = True):
    """Group the members of a WebDataset tar shard into ``(key, {ext: bytes})`` samples; with
    ``copy=False`` the values are memoryviews into ``shard`` (``tarstream.iter_members``).

    A truncated or corrupt tar ends the shard early with a warning; the caller counts what is
    missing.
    """
    current_key, current = None, {}
    try:
        for path, data in tarstream.iter_members(shard, copy=copy):
            name = path.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if key != current_key and current_key is not None:
                yield current_key, current
                current = {}
            current_key = key
            current[ext] = data
    except (tarstream.TarFormatError, EOFError, OSError) as exc:
        log.warning("shard stream ended early: %s", exc)
    if current_key is not None:
        yield current_key, current


def copy_out_of_shard(sample):
    """``(key, parts)`` with each memoryview in ``parts`` replaced by a copy of its bytes."""
    key, parts = sample
    if parts is None:
        return sample
    return key, {ext: bytes(data) for ext, data in parts.items()}


class ShardStream(torch.utils.data.IterableDataset):
    """Yields ``(images uint8 NCHW, labels int64, skipped)`` batches for one rank."""

    def __init__(self, data_url, manifest: Manifest, ranges: list[Range], *, batch_size,
                 transform, shuffle_seed: str | None, skip_batches: int = 0,
                 shuffle_buffer: int = 2000):
        super().__init__()
        self.skip_batches = skip_batches
        self.data_url, self.manifest, self.ranges = data_url, manifest, ranges
        self.batch_size, self.transform = batch_size, transform
        self.shuffle_seed, self.shuffle_buffer = shuffle_seed, shuffle_buffer

    def _samples(self, ranges):
        urls = [storage.join(self.data_url, self.manifest.split, self.manifest.shards[shard])
                for shard, _, _ in ranges]
        for (shard, start, stop), (url, data) in zip(ranges, prefetched(urls)):
            got = 0
            # Views, not copies: the shuffle buffer copies out those that wait long (_shuffled).
            for i, (key, parts) in enumerate(iter_tar_samples(data, copy=False)):
                if i < start:
                    continue  # skipped without decoding
                if i >= stop:
                    break
                got += 1
                yield key, parts
            del data  # the shard's memory goes once no sample of it waits in the buffer
            if got < stop - start:
                log.warning("%s: %d of %d samples missing", url, stop - start - got, stop - start)
                for _ in range(stop - start - got):
                    yield None, None  # keep the slot so batch counts stay equal across ranks

    def _decode(self, key, parts):
        """``(image, label)``, or None for a bad sample."""
        if parts is None:
            return None
        try:
            label = int(bytes(parts["cls"]))
            # A photo is a .jpg; a lossless source's pixels (CIFAR) a .png.
            image = parts["jpg"] if "jpg" in parts else parts["png"]
            # The transform decodes the bytes its own way (reduced-size for big photos).
            return self.transform(image), label
        except Exception as exc:  # corrupt JPEG, missing label: skip and count
            log.warning("skipping bad sample %s: %s", key, exc)
            return None

    def _shuffled(self, items, seed, copy_out=None):
        """``items`` through a seeded shuffle buffer. ``copy_out(item)``, if given, is applied to
        the items still waiting ``shuffle_buffer`` reads after they came in (see below)."""
        if seed is None:
            yield from items
            return
        # The buffer starts at an eighth of its size and grows to its full size (one sample for
        # every two read) as the epoch goes on: the first batch waits for 250 samples to arrive,
        # not 2,000 (two ImageNet shards, ~220 MB from the object store). The order is still a
        # pure function of the seed.
        rng, buf, start = random.Random(seed), [], max(1, self.shuffle_buffer // 8)
        # Samples come in as views into their shard, and one view keeps its whole shard alive:
        # the few samples that wait long in the buffer would keep some 14 ImageNet shards
        # (1.5 GB) alive (a sample stays through k draws from a full buffer of B with odds
        # e^(-k/B); of a 1,000-sample shard, one likely stays ~14,000 draws). Every quarter of
        # `hold` reads, the samples waiting for more than `hold` reads are copied out of it, so
        # a shard lives at most 1.25 * hold reads after its last sample came in. With a full
        # buffer, about a third of the samples wait that long.
        hold = self.shuffle_buffer
        for read, item in enumerate(items, start=1):
            buf.append((read, item))
            if copy_out is not None and read % max(1, hold // 4) == 0:
                for i, (since, waiting) in enumerate(buf):
                    if since <= read - hold:
                        buf[i] = (math.inf, copy_out(waiting))
            if len(buf) >= min(self.shuffle_buffer, max(start, read // 2)):
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()[1]
        rng.shuffle(buf)
        for _, item in buf:
            yield item

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        physical, nworkers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches from its workers in turn, starting with worker 0, so global
        # batch j comes from worker j % nworkers. After a resume at batch k the turn must start
        # at k % nworkers: worker p plays the part of worker (p + k) % nworkers.
        wid = (physical + self.skip_batches) % nworkers
        ranges = split_ranges(self.ranges, nworkers, wid, self.batch_size)
        seed = None if self.shuffle_seed is None else f"{self.shuffle_seed}/{wid}"
        mine = max(0, -(-(self.skip_batches - wid) // nworkers))  # this part's consumed batches
        first = mine * self.batch_size
        stream = itertools.islice(self._shuffled(self._samples(ranges), seed, copy_out_of_shard),
                                  first, None)  # dropped before decoding
        batch = BatchBuilder(self.batch_size)
        # The time this process spends making each batch (reading, decoding, augmenting), not
        # the time its consumer holds it: the clock restarts when the generator resumes.
        started = time.perf_counter()
        for position, (key, parts) in enumerate(stream, start=first):
            if seed is not None:
                # Augmentation draws from the `random` module, seeded per sample: the same
                # crops in or out of loader workers, and after a resume that skipped samples.
                random.seed(f"{seed}/{position}")
                # This draw used to seed numpy's generator; it stays so that every crop and
                # shift is what it was and recorded studies reproduce digit for digit.
                random.getrandbits(32)
            sample = self._decode(key, parts)
            if sample is None:
                batch.skip()
            else:
                batch.add(*sample)
            if batch.slots == self.batch_size:
                yield (*batch.take(), time.perf_counter() - started)
                started = time.perf_counter()
        if batch.slots:
            yield (*batch.take(), time.perf_counter() - started)


_frozen_in: int | None = None


def freeze_long_lived_objects() -> None:
    """Take the objects alive now out of the cyclic garbage collector's reach, once a process.

    A process that has imported torch tracks hundreds of thousands of objects (modules,
    functions, the model), and every full collection walks them all: a stall of a training step
    or more, a few times an epoch, triggered by whatever allocates next. Those objects live as long as the process, so walking them finds nothing. Collected
    once, then frozen (``gc.freeze``), they are skipped; later objects are collected as usual.
    Done before the loader forks its workers, it also keeps the inherited objects' pages shared:
    the collector no longer writes to them (the ``gc.freeze`` documentation).
    """
    global _frozen_in
    if _frozen_in != os.getpid():
        gc.collect()
        gc.freeze()
        _frozen_in = os.getpid()


class ShardLoader:
    """Iterates ``(images, labels)``; ``skipped`` counts bad samples seen so far, and
    ``produced`` / ``producing_s`` the images made and the time loader processes spent making
    them (so ``produced / producing_s`` is one loader process's rate while it works)."""

    def __init__(self, dataset: ShardStream, loader_workers: int, pin_memory: bool):
        self.dataset = dataset
        total = sum(b - a for _, a, b in dataset.ranges)
        self.num_batches = max(0, -(-total // dataset.batch_size) - dataset.skip_batches)
        self.skipped = 0
        self.produced, self.producing_s = 0, 0.0
        self.processes = max(1, loader_workers)
        self._loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=loader_workers, pin_memory=pin_memory,
            persistent_workers=False, prefetch_factor=4 if loader_workers else None,
        )

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        freeze_long_lived_objects()  # before the DataLoader forks its workers
        for images, labels, skipped, seconds in self._loader:
            self.skipped += skipped
            self.produced += len(labels)
            self.producing_s += seconds
            if len(labels):
                yield images, labels


def build_loader(data_url: str, split: str, *, batch_size: int, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, seed: int = 0, train: bool | None = None,
                 image_size: int = 32, augment: str = "cifar", loader_workers: int = 0,
                 skip_batches: int = 0, pin_memory: bool = False, eval_crops: int = 1,
                 manifest: Manifest | None = None) -> ShardLoader:
    """A loader of ``(images, labels)`` batches for one rank; see the module docstring.

    ``train`` defaults to ``split == "train"``. With ``eval_crops=10`` each evaluation sample
    is a (10, 3, H, W) stack of the paper's crops. ``skip_batches`` resumes mid-epoch: the samples
    of the batches already consumed are read in the same order and dropped before decoding, so
    the rest of the epoch is exactly what an uninterrupted run would have seen.
    """
    train = (split == "train") if train is None else train
    manifest = manifest or read_manifest(data_url, split)
    ranges = plan_epoch(manifest.counts, rank=rank, world_size=world_size, batch_size=batch_size,
                        seed=seed, epoch=epoch, train=train)
    dataset = ShardStream(
        data_url, manifest, ranges, batch_size=batch_size,
        transform=build_transform(augment, image_size, train=train, eval_crops=eval_crops),
        shuffle_seed=f"{seed}/{epoch}/{rank}" if train else None, skip_batches=skip_batches,
    )
    return ShardLoader(dataset, loader_workers=loader_workers, pin_memory=pin_memory)
