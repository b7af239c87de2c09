"""CIFAR-10 and CIFAR-100 from their official archives: every pixel and label comes back."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.cifar_source import find_cifar, load_cifar_split
from orchestrator.shards import build_split

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def add(tar: tarfile.TarFile, name: str, obj) -> None:
    data = pickle.dumps(obj)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_archive(folder: Path, kind: str, per_batch: int = 6, seed: int = 0):
    """An archive laid out as the official one (python pickles, bytes keys), small random
    images; returns it and the pixels and labels it holds."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        names, batches, test, meta = CIFAR10_NAMES, [f"data_batch_{i}" for i in range(1, 6)], \
            "test_batch", "batches.meta"
        top, labels_key, names_key = "cifar-10-batches-py", b"labels", b"label_names"
    else:  # names deliberately out of order: labels must follow the sorted order
        names, batches, test, meta = ["zebra", "apple", "maple_tree"], ["train"], "test", "meta"
        top, labels_key, names_key = "cifar-100-python", b"fine_labels", b"fine_label_names"
    held = {}
    path = folder / ("cifar-10-python.tar.gz" if kind == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for member in batches + [test]:
            n = per_batch * (5 if member == "train" else 1)
            pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, len(names), n).tolist()
            add(tar, f"{top}/{member}", {b"data": pixels, labels_key: labels,
                                          b"filenames": [f"x{i}.png".encode() for i in range(n)]})
            held[member] = (pixels, labels)
        add(tar, f"{top}/{meta}", {names_key: [n.encode() for n in names]})
    train = (np.concatenate([held[b][0] for b in batches]), sum((held[b][1] for b in batches), []))
    return path, names, train, held[test]


def shard_samples(dest: Path, split: str) -> tuple[dict, dict]:
    manifest = json.loads((dest / split / "manifest.json").read_text())
    out = {}
    for shard in manifest["shards"]:
        with tarfile.open(dest / split / shard["name"]) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return manifest, out


def pixels_of(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image).transpose(2, 0, 1).reshape(-1)  # back to CIFAR's plane order


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_the_archive_round_trips_with_identical_pixels_and_labels(kind, tmp_path):
    archive, names, (train_px, train_lab), (test_px, test_lab) = fake_archive(tmp_path, kind)
    dest = tmp_path / "shards"
    train = build_split(tmp_path, str(dest), "train", shard_size=7, workers=2)
    val = build_split(archive, str(dest), "val", shard_size=7, workers=2)  # the archive itself
    classes = sorted(names)
    assert train["classes"] == classes == val["classes"]
    assert train["image_formats"] == {"jpg": 0, "png": len(train_px)} and train["converted"] == 0
    for split, pixels, labels in (("train", train_px, train_lab), ("val", test_px, test_lab)):
        _, got = shard_samples(dest, split)
        source = "train" if split == "train" else "test"
        assert len(got) == len(pixels)
        for i, row in enumerate(pixels):
            parts = got[f"{source}_{i:05d}"]
            np.testing.assert_array_equal(pixels_of(parts["png"]), row)
            assert int(parts["cls"]) == classes.index(names[labels[i]])


def test_stock_webdataset_and_the_loader_read_the_png_shards(tmp_path):
    import torch
    import webdataset as wds

    from training.data import build_loader

    archive, names, _, (test_px, test_lab) = fake_archive(tmp_path, "cifar10")
    dest = tmp_path / "shards"
    build_split(archive, str(dest), "val", shard_size=4, workers=1)
    urls = [str(p) for p in sorted((dest / "val").glob("shard-*.tar"))]
    stock = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb8")}
    assert len(stock) == len(test_px)
    first = stock["test_00000"]["png"]
    np.testing.assert_array_equal(first.transpose(2, 0, 1).reshape(-1), test_px[0])

    loader = build_loader(str(dest), "val", batch_size=4, image_size=32, augment="cifar")
    seen = torch.cat([images for images, _ in loader]).contiguous()
    assert seen.dtype == torch.uint8
    expected = torch.from_numpy(test_px.reshape(-1, 3, 32, 32))
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, expected.numpy()))


def test_the_holdout_makes_p1s_tuning_split(tmp_path):
    archive, _, (train_px, _), (test_px, _) = fake_archive(tmp_path, "cifar10", per_batch=4)
    held = 5
    sizes = {s: len(load_cifar_split(archive, s, holdout=held).samples)
             for s in ("train", "val", "test")}
    assert sizes == {"train": len(train_px) - held, "val": held, "test": len(test_px)}
    val = load_cifar_split(archive, "val", holdout=held)
    np.testing.assert_array_equal(pixels_of(val.samples[-1].read()), train_px[-1])
    with pytest.raises(ValueError, match="no 'test' split without a holdout"):
        load_cifar_split(archive, "test")


def test_two_archives_in_one_folder_are_refused_by_name(tmp_path):
    fake_archive(tmp_path, "cifar10")
    fake_archive(tmp_path, "cifar100")
    with pytest.raises(ValueError, match="both CIFAR-10 and CIFAR-100"):
        find_cifar(tmp_path)
    with pytest.raises(FileNotFoundError, match="lacks"):
        bad = tmp_path / "broken" / "cifar-10-python.tar.gz"
        bad.parent.mkdir()
        with tarfile.open(bad, "w:gz"):
            pass
        load_cifar_split(bad, "train")
