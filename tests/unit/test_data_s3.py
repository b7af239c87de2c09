"""The loader against a real S3 server (moto over HTTP), and through injected network faults."""

import json
from collections import Counter
from urllib.parse import urlparse

import pytest

from faultproxy import FaultProxy
from training.data import build_loader, read_manifest
from training.data.storage import StorageError

pytestmark = pytest.mark.timeout(300)


def read_all(url, world, workers, split="val", batch=8):
    labels, total = Counter(), 0
    for rank in range(world):
        loader = build_loader(url, split, batch_size=batch, rank=rank, world_size=world,
                              image_size=16, loader_workers=workers)
        for _, y in loader:
            labels.update(y.tolist())
            total += len(y)
    return total, labels


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_eval_over_s3_sees_every_sample_once(s3_shards, world, workers):
    total, labels = read_all(s3_shards, world, workers)
    assert total == 52 and labels == Counter({0: 13, 1: 13, 2: 13, 3: 13})


def test_train_over_s3_gives_equal_batches(s3_shards):
    counts = [sum(1 for _ in build_loader(s3_shards, "train", batch_size=16, rank=r, world_size=2,
                                          image_size=16)) for r in range(2)]
    assert counts == [5, 5]


def test_local_and_s3_loaders_yield_the_same_batches(s3_shards, shards):
    def labels(url):
        return [y.tolist() for _, y in build_loader(url, "train", batch_size=16, image_size=16,
                                                     epoch=2, seed=5)]

    assert labels(s3_shards) == labels(shards)


@pytest.fixture
def through(s3_server, monkeypatch):
    """Point the loader at a fault proxy in front of the S3 server."""
    proxies = []

    def make(**faults):
        proxy = FaultProxy(urlparse(s3_server).port, **faults)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield make
    for p in proxies:
        p.close()


def test_connection_resets_mid_shard_are_retried(s3_shards, through):
    proxy = through(cut_connections=4, cut_after=30_000)
    total, labels = read_all(s3_shards, world=2, workers=0, split="train")
    assert proxy.cuts >= 2
    assert total == 160 and set(labels.values()) == {40}


def test_a_shard_that_never_arrives_whole_is_a_clear_error(s3_shards, through):
    from training.data import storage

    proxy = through(cut_connections=100, cut_after=30_000)
    shard = read_manifest(s3_shards, "train").shards[0]
    url = f"{s3_shards}/train/{shard}"
    with pytest.raises(StorageError, match=rf"reading {url} failed 3 times"):
        storage._read_object(url, max_attempts=3, base_delay=0.01)
    assert proxy.cuts == 3


def test_5xx_answers_are_retried(s3_shards, through):
    proxy = through(fail_requests=3)
    total, _ = read_all(s3_shards, world=1, workers=0)
    assert proxy.failures == 3 and total == 52


def test_stalled_answers_time_out_and_are_retried(s3_shards, through, monkeypatch):
    monkeypatch.setenv("DEPTHLAB_S3_READ_TIMEOUT", "1")
    proxy = through(stall_connections=3, stall_s=4.0)
    total, labels = read_all(s3_shards, world=2, workers=0, split="train")
    assert proxy.stalls == 3
    assert total == 160 and set(labels.values()) == {40}  # every sample once


def test_shards_on_s3_carry_their_sha256_and_the_manifest_names_it(s3_shards):
    from training.data import storage

    manifest = json.loads(storage.read_bytes(f"{s3_shards}/train/manifest.json"))
    for entry in manifest["shards"]:
        url = f"{s3_shards}/train/{entry['name']}"
        assert storage.stored_sha256(url) == entry["sha256"] == storage.sha256(storage.read_bytes(url))
    assert storage.stored_sha256(f"{s3_shards}/train/not-there.tar") is None


def test_missing_bucket_and_manifest_are_clear_errors(s3_server):
    with pytest.raises(StorageError, match="no usable manifest.*does not exist"):
        read_manifest("s3://no-such-bucket/data", "train")
    with pytest.raises(StorageError, match="no usable manifest"):
        read_manifest("s3://test-data/not-there", "train")


def test_one_s3_client_per_process_shared_by_its_threads(monkeypatch):
    """A client costs 0.2-0.4 s of CPU: the loader's prefetch thread (new every epoch) reuses the
    process's; a forked child (a DataLoader worker) makes its own."""
    import os
    import threading

    from training.data import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never contacted
    main = storage.s3_client()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(storage.s3_client()))
    thread.start()
    thread.join()
    assert seen == [main]
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when it got a client of its own
        os._exit(0 if storage.s3_client() is not main else 1)
    assert os.waitpid(pid, 0)[1] == 0
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:10")
    assert storage.s3_client() is not main  # another endpoint, another client


def test_stock_webdataset_reads_the_s3_shards_as_the_docs_show(s3_shards, shards):
    """docs/architecture.md's example: webdataset over s3:// once register_webdataset_s3 has
    taught its gopen the scheme; the same samples as the local shards, byte for byte."""
    import webdataset as wds

    from training.data.storage import register_webdataset_s3

    register_webdataset_s3()
    manifest = read_manifest(s3_shards, "val")
    last = len(manifest.shards) - 1
    dataset = wds.WebDataset(f"{s3_shards}/val/shard-{{000000..{last:06d}}}.tar",
                             shardshuffle=False).to_tuple("__key__", "jpg;png", "cls")
    from_s3 = {key: (image, int(label)) for key, image, label in dataset}
    local = wds.WebDataset(f"{shards}/val/shard-{{000000..{last:06d}}}.tar",
                           shardshuffle=False).to_tuple("__key__", "jpg;png", "cls")
    assert from_s3 == {key: (image, int(label)) for key, image, label in local}
    assert len(from_s3) == manifest.num_samples
    # The docs' chain: decoded images and labels.
    image, label = next(iter(wds.WebDataset(f"{s3_shards}/val/shard-{{000000..{last:06d}}}.tar",
                                            shardshuffle=False)
                             .decode("pil").to_tuple("jpg;png", "cls")))
    assert image.size == (16, 16) and 0 <= int(label) < 4
