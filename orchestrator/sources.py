"""Where the images of a split come from, as a list of samples that can each be read alone.

Three layouts of ImageNet (and of anything shaped like it):
- class folders: ``ROOT/<split>/<wnid>/*.JPEG`` (the torchvision ImageFolder layout);
- a flat validation folder ``ROOT/val/*.JPEG`` labelled by the devkit's ground truth
  (``ILSVRC2012_devkit_t12.tar.gz``) or a labels file (``val_labels.txt`` with ``<file> <wnid>``
  lines, or Kaggle's ``LOC_val_solution.csv``);
- the official archives, read where they lie, never extracted: ``ILSVRC2012_img_train.tar``
  (a tar of one tar per class), ``ILSVRC2012_img_val.tar`` (flat) and the devkit. One pass over
  the tar headers records where each JPEG's bytes sit in the archive; a sample is then one seek
  and one read, so samples can be shuffled across classes without unpacking 150 GB.
"""

from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"


@dataclass(frozen=True)
class SourceSample:
    key: str  # no dots: WebDataset splits member names at the first dot
    label: int
    read: Callable[[], bytes]


@dataclass(frozen=True)
class SplitSource:
    classes: list[str]  # class ids in sorted order: label = position
    class_names: dict[str, str]
    samples: list[SourceSample]
    origin: str  # for messages: which layout was found


def _key(name: str) -> str:
    return Path(name).stem.replace(".", "_")


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _archive_reader(archive: Path, offset: int, size: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(archive, "rb") as f:
            f.seek(offset)
            return f.read(size)

    return read


# ------------------------------------------------------------------------------- devkit

@dataclass(frozen=True)
class Devkit:
    wnids: list[str]  # ILSVRC2012_ID 1..1000 -> wnid, in ID order
    names: dict[str, str]  # wnid -> words
    val_ground_truth: list[int]  # ILSVRC2012_ID per validation image, in file-number order


def read_devkit(path: Path) -> Devkit:
    """``meta.mat`` (synsets) and the validation ground truth from the devkit archive."""
    import scipy.io

    with tarfile.open(path, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        try:
            meta = scipy.io.loadmat(io.BytesIO(tar.extractfile(members["meta.mat"]).read()),
                                    squeeze_me=True)["synsets"]
            truth = tar.extractfile(members["ILSVRC2012_validation_ground_truth.txt"]).read()
        except KeyError as exc:
            raise FileNotFoundError(f"{path} lacks {exc.args[0]}: not an ILSVRC2012 devkit") from None
    leaves = sorted((int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"])) for s in meta
                    if int(s["num_children"]) == 0)
    return Devkit(wnids=[w for _, w, _ in leaves], names={w: n for _, w, n in leaves},
                  val_ground_truth=[int(x) for x in truth.split()])


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "devkit" / name):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------- layouts

def _class_folders(split_dir: Path, names: dict[str, str],
                   train_classes: list[str] | None) -> SplitSource:
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = train_classes or present
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"{split_dir} has classes absent from training: {unknown[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    samples = [SourceSample(_key(f.name), index[cid], _file_reader(f))
               for cid in present
               for f in sorted((split_dir / cid).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    return SplitSource(classes, {c: names[c] for c in classes if c in names}, samples,
                       f"class folders in {split_dir}")


def _val_labels(root: Path, files: list[str], devkit: Devkit | None) -> dict[str, str]:
    """File stem -> wnid for a flat validation set."""
    plain = _find(root, "val_labels.txt")
    if plain:
        pairs = (line.split() for line in plain.read_text().splitlines() if line.strip())
        return {_key(p[0]): p[1] for p in pairs}
    kaggle = _find(root, "LOC_val_solution.csv")
    if kaggle:
        with open(kaggle, newline="") as f:
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    if devkit:
        # Validation images are numbered ILSVRC2012_val_00000001..50000 in ground-truth order.
        out = {}
        for name in files:
            number = int(_key(name).rsplit("_", 1)[-1])
            out[_key(name)] = devkit.wnids[devkit.val_ground_truth[number - 1] - 1]
        return out
    raise FileNotFoundError(
        f"flat validation images in {root} need labels: put {DEVKIT}, val_labels.txt "
        f"(<file> <wnid> per line) or LOC_val_solution.csv beside them, or use class folders"
    )


def _labelled(stems_and_readers, labels: dict[str, str], classes: list[str] | None):
    missing = [k for k, _ in stems_and_readers if k not in labels]
    if missing:
        raise ValueError(f"{len(missing)} validation images have no label (e.g. {missing[0]})")
    classes = classes or sorted(set(labels[k] for k, _ in stems_and_readers))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({labels[k] for k, _ in stems_and_readers} - set(index))
    if unknown:
        raise ValueError(f"validation labels name classes absent from training: {unknown[:5]}")
    return classes, [SourceSample(k, index[labels[k]], r) for k, r in stems_and_readers]


def _index_tar(archive: Path):
    """``(member name, data offset, size)`` of each file in an uncompressed tar."""
    with tarfile.open(archive, "r:") as tar:
        for m in tar:
            if m.isfile():
                yield m.name, m.offset_data, m.size


def _archive_train(archive: Path, names: dict[str, str]) -> SplitSource:
    entries: list[tuple[str, str, int, int]] = []  # wnid, file name, offset, size
    with open(archive, "rb") as outer_file, tarfile.open(fileobj=outer_file, mode="r:") as outer:
        for member in outer:
            if not member.isfile() or not member.name.endswith(".tar"):
                continue
            wnid = Path(member.name).stem
            inner_file = outer.extractfile(member)
            with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                for m in inner:
                    if m.isfile():
                        entries.append((wnid, m.name, member.offset_data + m.offset_data, m.size))
    classes = sorted({e[0] for e in entries})
    index = {c: i for i, c in enumerate(classes)}
    samples = [SourceSample(_key(name), index[wnid], _archive_reader(archive, off, size))
               for wnid, name, off, size in entries]
    return SplitSource(classes, {c: names[c] for c in classes if c in names}, samples,
                       f"archive {archive.name}")


def load_split(root: Path, split: str, *, train_classes: list[str] | None = None) -> SplitSource:
    """The samples of ``split`` under ``root``, whichever layout it has."""
    root = Path(root)
    devkit_path = _find(root, DEVKIT)
    devkit = read_devkit(devkit_path) if devkit_path else None
    names = dict(devkit.names) if devkit else read_class_names(root)
    split_dir = root / split
    if split_dir.is_dir():
        if any(p.is_dir() for p in split_dir.iterdir()):
            source = _class_folders(split_dir, names, train_classes)
        else:
            files = sorted(f for f in split_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{split_dir} holds no images")
            labels = _val_labels(root, [f.name for f in files], devkit)
            classes, samples = _labelled([(_key(f.name), _file_reader(f)) for f in files], labels,
                                         train_classes or (sorted(devkit.wnids) if devkit else None))
            source = SplitSource(classes, {c: names[c] for c in classes if c in names}, samples,
                                 f"flat folder {split_dir}")
    elif split == "train" and (root / TRAIN_TAR).is_file():
        source = _archive_train(root / TRAIN_TAR, names)
    elif split == "val" and (root / VAL_TAR).is_file():
        archive = root / VAL_TAR
        entries = list(_index_tar(archive))
        labels = _val_labels(root, [n for n, _, _ in entries], devkit)
        classes, samples = _labelled(
            [(_key(n), _archive_reader(archive, off, size)) for n, off, size in entries], labels,
            train_classes or (sorted(devkit.wnids) if devkit else None))
        source = SplitSource(classes, {c: names[c] for c in classes if c in names}, samples,
                             f"archive {archive.name}")
    else:
        raise FileNotFoundError(
            f"no {split} data in {root}: expected {split}/<class id>/*.JPEG"
            + (f", a flat {split}/ with labels, or {TRAIN_TAR if split == 'train' else VAL_TAR}")
        )
    if not source.samples:
        raise FileNotFoundError(f"{source.origin} holds no images")
    return source


def read_class_names(root: Path) -> dict[str, str]:
    """``classes.txt`` / ``LOC_synset_mapping.txt``: ``<id> <name...>`` per line, if present."""
    for name in ("classes.txt", "LOC_synset_mapping.txt"):
        path = root / name
        if path.is_file():
            pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
            return {p[0]: (p[1] if len(p) > 1 else p[0]) for p in pairs}
    return {}
