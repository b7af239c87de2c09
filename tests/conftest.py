"""Shared fixtures: small real shards in a temp folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    from orchestrator.demo_data import generate

    return generate(tmp_path_factory.mktemp("images"), num_classes=4, train_per_class=40,
                    val_per_class=13, size=16)


@pytest.fixture(scope="session")
def shards(demo_images, tmp_path_factory) -> str:
    """160 training samples in shards of 30 (the last one short), 52 validation samples."""
    from orchestrator.shards import build_split

    dest = tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):
        build_split(demo_images, str(dest), split, shard_size=30, workers=2)
    return str(dest)
