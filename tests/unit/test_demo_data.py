"""The generated demo data carries a signal a ConvNet learns and a linear model does not."""

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.demo_data import class_table, generate
from orchestrator.shards import build_split
from training.config import TrainConfig
from training.context import WorkerContext
from training.loop import train


def test_layout_is_imagenets_and_files_are_real_jpegs(tmp_path):
    root = generate(tmp_path, num_classes=4, train_per_class=3, val_per_class=2, size=16)
    files = sorted((root / "train").rglob("*.JPEG"))
    assert len(files) == 12 and {f.parent.name for f in files} == {"c000", "c001", "c002", "c003"}
    assert Image.open(files[0]).format == "JPEG" and Image.open(files[0]).size == (16, 16)
    assert (root / "classes.txt").read_text().splitlines()[0] == "c000 disk-0deg"
    assert len({cid for cid, _, _ in class_table(10)}) == 10


def load_split(root, split):
    xs, ys = [], []
    for label, folder in enumerate(sorted((root / split).iterdir())):
        for f in sorted(folder.iterdir()):
            xs.append(np.asarray(Image.open(f), dtype=np.float32).reshape(-1) / 255.0)
            ys.append(label)
    return torch.tensor(np.stack(xs)), torch.tensor(ys)


def linear_val_error(root) -> float:
    """Softmax regression on the pixels, trained to convergence: the linear baseline."""
    x, y = load_split(root, "train")
    xv, yv = load_split(root, "val")
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mean) / std, (xv - mean) / std
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return 100.0 * (model(xv).argmax(1) != yv).float().mean().item()


@pytest.mark.slow
def test_a_small_resnet_beats_a_linear_model_on_the_demo_data(tmp_path):
    root = generate(tmp_path / "images")  # the demo's own settings
    linear = linear_val_error(root)
    assert linear > 70.0  # chance is 90%: the class is not in the pixels' linear structure
    for split in ("train", "val"):
        build_split(root, str(tmp_path / "shards"), split, shard_size=500)
    torch.manual_seed(0)
    cfg = TrainConfig(arch="residual", depth=8, data_url=str(tmp_path / "shards"), image_size=16,
                      epochs=4, global_batch_size=128, log_every_steps=50)
    convnet = train(cfg, WorkerContext())["val/error_top1"]
    assert convnet < linear - 10.0, (convnet, linear)
