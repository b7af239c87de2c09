import gc
import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset

from orchestrator.shards import build_split
from orchestrator.sources import load_split
from training.data import loader as data
from training.data import build_loader, plan_epoch, read_manifest, split_ranges
from training.data.storage import StorageError

COUNTS = (30, 30, 30, 30, 30, 10)  # 160 samples, the last shard short


def expand(ranges):
    """Global sample ids (shard, index) of a list of ranges."""
    return [(s, i) for s, a, b in ranges for i in range(a, b)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 7, 16])
def test_training_plan_equal_batches_no_duplicates(world, batch):
    plans = [expand(plan_epoch(COUNTS, rank=r, world_size=world, batch_size=batch, seed=1,
                               epoch=2, train=True)) for r in range(world)]
    sizes = {len(p) for p in plans}
    assert len(sizes) == 1 and sizes.pop() % batch == 0
    every = [x for p in plans for x in p]
    assert len(every) == len(set(every))
    assert sum(COUNTS) - len(every) < world * batch  # only the remainder is dropped


def test_training_plan_is_a_pure_function_of_seed_and_epoch():
    kw = dict(rank=0, world_size=2, batch_size=8, train=True)
    assert plan_epoch(COUNTS, seed=1, epoch=0, **kw) == plan_epoch(COUNTS, seed=1, epoch=0, **kw)
    assert plan_epoch(COUNTS, seed=1, epoch=0, **kw) != plan_epoch(COUNTS, seed=1, epoch=1, **kw)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_plan_reads_every_sample_exactly_once(world):
    every = [x for r in range(world) for x in expand(
        plan_epoch(COUNTS, rank=r, world_size=world, batch_size=7, seed=0, epoch=0, train=False))]
    assert sorted(every) == [(s, i) for s, n in enumerate(COUNTS) for i in range(n)]


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_worker_split_cuts_at_batch_boundaries(parts):
    ranges = plan_epoch(COUNTS, rank=0, world_size=1, batch_size=16, seed=0, epoch=0, train=True)
    pieces = [split_ranges(ranges, parts, p, 16) for p in range(parts)]
    assert sum((expand(p) for p in pieces), []) == expand(ranges)
    assert all(len(expand(p)) % 16 == 0 for p in pieces)


def test_plan_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="full batch"):
        plan_epoch((5,), rank=0, world_size=2, batch_size=4, seed=0, epoch=0, train=True)
    with pytest.raises(ValueError, match="outside"):
        plan_epoch((5,), rank=2, world_size=2, batch_size=1, seed=0, epoch=0, train=False)


def test_shards_follow_the_contract(shards, demo_images):
    manifest = json.loads(Path(shards, "train", "manifest.json").read_text())
    assert manifest["num_samples"] == 160 and manifest["classes"] == ["c000", "c001", "c002", "c003"]
    assert [s["num_samples"] for s in manifest["shards"]] == [30, 30, 30, 30, 30, 10]
    originals = {p.stem: p.read_bytes() for p in (demo_images / "train").rglob("*.JPEG")}
    # Stock webdataset reads them; the JPEG bytes are the originals, labels as sorted class ids.
    url = str(Path(shards, "train", "shard-{000000..000005}.tar"))
    seen = list(webdataset.WebDataset(url, shardshuffle=False))
    assert len(seen) == 160
    for sample in seen:
        assert sample["jpg"] == originals[sample["__key__"]]
        assert int(sample["cls"]) == int(sample["__key__"][1:4])
    # Shards mix classes.
    first = [int(s["cls"]) for s in seen[:30]]
    assert len(set(first)) > 1


def test_a_shard_holds_what_webdatasets_own_writer_writes(demo_images):
    """The builder writes its tars with the standard library (it also runs where webdataset is
    not installed: the GPU check's machine); webdataset.TarWriter, given the same source
    samples, writes the same members with the same bytes."""
    from orchestrator.shards import shard_bytes

    samples = load_split(demo_images, "train").samples[:30]

    def members(data: bytes) -> dict[str, bytes]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

    ours, _ = shard_bytes(samples)
    buf = io.BytesIO()
    with webdataset.TarWriter(buf, encoder=False) as writer:
        for sample in samples:
            writer.write({"__key__": sample.key, "jpg": sample.read(),
                          "cls": str(sample.label).encode()})
    assert members(ours) == members(buf.getvalue()) and len(members(ours)) == 60


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_eval_loader_sees_every_sample_once(shards, world, workers):
    labels = Counter()
    total = 0
    for rank in range(world):
        loader = build_loader(shards, "val", batch_size=8, rank=rank, world_size=world,
                              image_size=16, loader_workers=workers)
        for images, y in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
            labels.update(y.tolist())
            total += len(y)
    assert total == 52 and labels == Counter({0: 13, 1: 13, 2: 13, 3: 13})


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_equal_batch_counts(shards, workers):
    counts = [sum(1 for _ in build_loader(shards, "train", batch_size=16, rank=r, world_size=3,
                                          image_size=16, loader_workers=workers)) for r in range(3)]
    assert counts == [3, 3, 3]


def test_loader_takes_the_startup_objects_out_of_the_collector(shards, monkeypatch):
    # Full collections walk every object torch keeps alive (0.26 s each on 2 cores): the loader
    # freezes them once, before any worker forks.
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(data, "_frozen_in", None)
    next(iter(build_loader(shards, "train", batch_size=16, image_size=16)))
    assert gc.get_freeze_count() > 10_000


def test_shuffle_buffer_starts_small_then_grows_to_full_size():
    stream = data.ShardStream("unused", None, [], batch_size=8, transform=None,
                              shuffle_seed="s", shuffle_buffer=800)
    read = []

    def items():
        for i in range(5000):
            read.append(i)
            yield i

    out, ahead = [], []
    for item in stream._shuffled(items(), "s"):
        out.append(item)
        ahead.append(len(read) - len(out))  # samples read but not yet given out
    assert sorted(out) == list(range(5000))
    assert ahead[0] == 100 - 1  # the first sample comes after an eighth of the buffer is read
    assert max(ahead) == 800 - 1  # ... and the buffer grows to its full size
    assert out == list(stream._shuffled(iter(range(5000)), "s"))  # a function of the seed


def _shuffle_retaining(copy_out, hold=64, per_shard=10, nshards=60):
    """Samples of bytearray "shards" through the shuffle buffer as views, as the loader reads
    them; returns the keys given out and, for each shard, the most samples read while it was
    still held after its last sample came in."""
    shards = [bytearray([s]) * per_shard for s in range(nshards)]
    stream = data.ShardStream("unused", None, [], batch_size=8, transform=None,
                              shuffle_seed="s", shuffle_buffer=hold)
    read = []

    def samples():
        for s, shard in enumerate(shards):
            view = memoryview(shard)
            for i in range(per_shard):
                read.append(s)
                yield f"{s}/{i}", {"jpg": view[i:i + 1], "cls": b"0"}
        del view

    def held(shard):  # a bytearray cannot grow while a view of it exists
        try:
            shard.append(0)
        except BufferError:
            return True
        shard.pop()
        return False

    keys, overstay = [], [0] * nshards
    for key, parts in stream._shuffled(samples(), "s", copy_out):
        assert bytes(parts["jpg"]) == bytes([int(key.split("/")[0])])  # the right bytes
        keys.append(key)
        del parts
        for s in range(read[-1]):  # shards whose samples have all been read
            if held(shards[s]):
                overstay[s] = max(overstay[s], len(read) - (s + 1) * per_shard)
    return keys, overstay


def test_samples_that_wait_long_are_copied_out_of_their_shards():
    # One view keeps a whole shard alive, and the odd sample waits long in the shuffle buffer:
    # samples still waiting after `hold` (the buffer's size) reads are copied out, so a shard
    # goes at most 1.25 * hold reads after its last sample came in. The order does not change.
    detached = []

    def detach(sample):
        detached.append(sample[0])
        return data.copy_out_of_shard(sample)

    keys, overstay = _shuffle_retaining(detach)
    assert max(overstay) <= 1.25 * 64
    assert 0.25 < len(detached) / len(keys) < 0.4  # about a third are copied, once each
    assert len(set(detached)) == len(detached)
    kept_keys, kept = _shuffle_retaining(None)
    assert max(kept) > 2 * 64  # without copying out, some shards live far longer
    assert keys == kept_keys and sorted(keys) == sorted(f"{s}/{i}" for s in range(60) for i in range(10))


def test_the_training_order_is_pinned(shards):
    # The samples' order in an epoch, a pure function of (seed, epoch, rank): as with the
    # augmentation draws below, a change here changes every recorded study.
    loader = build_loader(shards, "train", batch_size=16, seed=3, epoch=1, rank=1, world_size=2)
    keys, decode = [], loader.dataset._decode

    def recording(key, parts):
        keys.append(key)
        return decode(key, parts)

    loader.dataset._decode = recording
    assert sum(len(y) for _, y in loader) == 80
    assert keys[:10] == ["c001_26", "c000_22", "c000_29", "c003_8", "c002_23", "c002_11",
                         "c003_31", "c003_27", "c002_21", "c000_32"]
    assert keys[-3:] == ["c001_20", "c002_6", "c001_10"]


def test_train_order_is_reproducible_and_resume_skips_exactly(shards):
    def labels(**kw):
        torch.manual_seed(0)
        return [y.tolist() for _, y in build_loader(shards, "train", batch_size=16, image_size=16,
                                                     epoch=1, seed=3, **kw)]

    full = labels()
    assert full == labels()
    assert labels(skip_batches=4) == full[4:]
    assert labels(loader_workers=2, skip_batches=3) == labels(loader_workers=2)[3:]


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_and_counted(tmp_path, demo_images):
    good = next((demo_images / "val" / "c000").iterdir()).read_bytes()
    split = tmp_path / "val"
    split.mkdir()
    _write_tar(split / "shard-000000.tar", {
        "a.jpg": good, "a.cls": b"0",
        "b.jpg": good[: len(good) // 3], "b.cls": b"1",   # truncated JPEG
        "c.jpg": b"not a jpeg", "c.cls": b"2",            # corrupt
        "d.jpg": good,                                    # no label
        "e.jpg": good, "e.cls": b"3",
    })
    (split / "manifest.json").write_text(json.dumps(
        {"shards": [{"name": "shard-000000.tar", "num_samples": 5}], "classes": ["a", "b", "c", "d"]}))
    loader = build_loader(str(tmp_path), "val", batch_size=4, image_size=16)
    got = [y.tolist() for _, y in loader]
    assert sum(got, []) == [0, 3] and loader.skipped == 3


def test_truncated_tar_ends_the_shard_and_counts_the_rest(tmp_path, shards):
    split = tmp_path / "val"
    split.mkdir()
    data = Path(shards, "val", "shard-000000.tar").read_bytes()
    (split / "shard-000000.tar").write_bytes(data[: len(data) // 2])
    (split / "manifest.json").write_text(json.dumps(
        {"shards": [{"name": "shard-000000.tar", "num_samples": 30}], "classes": ["a"] * 4}))
    loader = build_loader(str(tmp_path), "val", batch_size=8, image_size=16)
    n = sum(len(y) for _, y in loader)
    assert 0 < n < 30 and n + loader.skipped == 30


def test_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(StorageError, match="no usable manifest"):
        read_manifest(str(tmp_path), "train")


def test_a_folder_without_images_is_one_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        load_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no val data"):
        load_split(tmp_path, "val")


def test_rebuilding_keeps_intact_shards(demo_images, tmp_path):
    first = build_split(demo_images, str(tmp_path), "val", shard_size=20, workers=1)
    again = build_split(demo_images, str(tmp_path), "val", shard_size=20, workers=1)
    assert first["stats"]["written"] == 3
    assert again["stats"]["written"] == 0 and again["stats"]["already_there"] == 3


def test_rebuilding_rewrites_a_shard_whose_content_changed_at_the_same_size(demo_images, tmp_path):
    import shutil

    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(demo_images, images)
    first = build_split(images, str(tmp_path / "shards"), "val", shard_size=20, workers=1)
    one = sorted((images / "val").rglob("*.JPEG"))[0]
    pixels = Image.open(one).convert("RGB")
    pixels.putpixel((0, 0), (255, 0, 255))
    pixels.save(one, quality=90)
    again = build_split(images, str(tmp_path / "shards"), "val", shard_size=20, workers=1)
    changed = [a["name"] for a, b in zip(first["shards"], again["shards"]) if a != b]
    assert len(changed) == 1 and again["stats"]["written"] == 1
    before, after = (next(e for e in m["shards"] if e["name"] == changed[0])
                     for m in (first, again))
    assert before["bytes"] == after["bytes"]  # the case a size check misses


def test_the_per_sample_augmentation_draws_are_pinned(shards):
    # What `random` gives a transform at each position of an epoch. These values decide every
    # crop, shift and flip of the recorded studies (README): a change to the seeding changes
    # them all, and the studies no longer reproduce digit for digit.
    drawn = []

    def record(data):
        drawn.append(random.getrandbits(16))
        return torch.zeros(3, 2, 2, dtype=torch.uint8)

    loader = build_loader(shards, "train", batch_size=8, seed=3, epoch=1, rank=1, world_size=2)
    loader.dataset.transform = record
    next(iter(loader))
    assert drawn == [56993, 12662, 54808, 29169, 31390, 45961, 12199, 24159]


@pytest.mark.parametrize("augment", ["cifar", "imagenet"])
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_stay_what_they_were(shards, augment, workers):
    # Worker processes send the batches through shared memory. Holding every batch or dropping
    # each at once must give the same pixels, every batch in memory of its own.
    def batches():
        return build_loader(shards, "train", batch_size=16, image_size=16, augment=augment,
                            seed=5, loader_workers=workers)

    def sums(images, labels):
        return images.sum((1, 2, 3)).tolist(), labels.tolist()

    dropped = [sums(*batch) for batch in batches()]  # each batch dropped as the next comes
    held = list(batches())
    assert len(held) == 10 and len({images.data_ptr() for images, _ in held}) == len(held)
    assert all(images.is_contiguous(memory_format=torch.channels_last) for images, _ in held)
    assert [sums(*batch) for batch in held] == dropped
