"""Dataset layouts the shard builder reads, on a miniature ILSVRC2012 made here."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from orchestrator.shards import build_split
from orchestrator.sources import load_split

# ILSVRC2012_IDs deliberately not in wnid order: labels must follow sorted wnids.
SYNSETS = [(1, "n03000003", "third"), (2, "n01000001", "first"), (3, "n02000002", "second")]
GROUND_TRUTH = [2, 3, 1, 1, 2, 3]  # ILSVRC2012_ID of val images 1..6


def jpeg(seed, mode="RGB", fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            add(tar, name, data)
    return buf.getvalue()


def train_images():
    out = {}
    for c, (_, wnid, _) in enumerate(SYNSETS):
        for i in range(4):
            out[(wnid, f"{wnid}_{i}.JPEG")] = jpeg(10 * c + i)
    out[(SYNSETS[0][1], f"{SYNSETS[0][1]}_cmyk.JPEG")] = jpeg(99, mode="CMYK")
    out[(SYNSETS[1][1], f"{SYNSETS[1][1]}_png.JPEG")] = jpeg(98, fmt="PNG")
    return out


def val_images():
    return {f"ILSVRC2012_val_{i:08d}.JPEG": jpeg(100 + i) for i in range(1, 7)}


@pytest.fixture
def archives(tmp_path) -> Path:
    root = tmp_path / "ilsvrc"
    root.mkdir()
    by_class = {}
    for (wnid, name), data in train_images().items():
        by_class.setdefault(wnid, []).append((name, data))
    (root / "ILSVRC2012_img_train.tar").write_bytes(
        tar_bytes([(f"{w}.tar", tar_bytes(m)) for w, m in sorted(by_class.items())]))
    (root / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(sorted(val_images().items())))
    meta = io.BytesIO()
    synsets = np.array([(i, w, words, 0) for i, w, words in SYNSETS] + [(1001, "n99", "root", 3)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                              ("num_children", "O")])
    scipy.io.savemat(meta, {"synsets": synsets})
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "\n".join(map(str, GROUND_TRUTH)).encode())
    return root


def samples_of(dest, split):
    manifest = json.loads(Path(dest, split, "manifest.json").read_text())
    out = {}
    for shard in manifest["shards"]:
        with tarfile.open(Path(dest, split, shard["name"])) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return manifest, out


def test_archives_are_read_in_place_with_devkit_labels(archives, tmp_path):
    dest = tmp_path / "shards"
    train = build_split(archives, str(dest), "train", shard_size=4, workers=2)
    val = build_split(archives, str(dest), "val", shard_size=4, workers=2)
    assert not any(p.is_dir() for p in archives.iterdir())  # nothing was extracted
    wnids = sorted(w for _, w, _ in SYNSETS)
    assert train["classes"] == wnids == val["classes"]
    assert train["class_names"] == {"n01000001": "first", "n02000002": "second", "n03000003": "third"}
    assert train["num_samples"] == 14 and train["converted"] == 1 and train["stats"]["bad"] == 0
    assert train["image_formats"] == {"jpg": 13, "png": 1}

    _, got = samples_of(dest, "train")
    originals = {Path(n).stem: (wnids.index(w), d) for (w, n), d in train_images().items()}
    for key, parts in got.items():
        label, data = originals[key]
        assert int(parts["cls"]) == label
        if key.endswith("_cmyk"):  # lossy already: an RGB JPEG
            converted = Image.open(io.BytesIO(parts["jpg"]))
            assert converted.format == "JPEG" and converted.mode == "RGB"
        elif key.endswith("_png"):  # lossless: kept as the PNG it is, whatever its name said
            assert parts["png"] == data and "jpg" not in parts
        else:
            assert parts["jpg"] == data  # original bytes, not re-encoded

    _, got = samples_of(dest, "val")
    wnid_of_id = {i: w for i, w, _ in SYNSETS}
    for n, truth in enumerate(GROUND_TRUTH, start=1):
        parts = got[f"ILSVRC2012_val_{n:08d}"]
        assert int(parts["cls"]) == wnids.index(wnid_of_id[truth])
        assert parts["jpg"] == val_images()[f"ILSVRC2012_val_{n:08d}.JPEG"]


def test_flat_val_with_a_labels_file_and_class_folders_agree(tmp_path):
    root = tmp_path / "imagenet"
    for (wnid, name), data in train_images().items():
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "train" / wnid / name).write_bytes(data)
    (root / "val").mkdir()
    lines = []
    for (name, data), truth in zip(sorted(val_images().items()), GROUND_TRUTH):
        (root / "val" / name).write_bytes(data)
        lines.append(f"{name} {dict((i, w) for i, w, _ in SYNSETS)[truth]}")
    (root / "val_labels.txt").write_text("\n".join(lines))
    source = load_split(root, "val", train_classes=load_split(root, "train").classes)
    labels = {s.key: s.label for s in source.samples}
    assert labels["ILSVRC2012_val_00000001"] == 0 and labels["ILSVRC2012_val_00000003"] == 2


def test_unlabelled_flat_val_is_one_clear_error(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(jpeg(1))
    with pytest.raises(FileNotFoundError, match="need labels"):
        load_split(tmp_path, "val")


def test_undecodable_source_images_are_skipped_and_counted(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "good.JPEG").write_bytes(jpeg(1))
    (root / "train" / "a" / "broken.JPEG").write_bytes(b"\xff\xd8garbage")
    m = build_split(root, str(tmp_path / "out"), "train", shard_size=10, workers=1)
    assert m["num_samples"] == 1 and m["skipped"] == 1
