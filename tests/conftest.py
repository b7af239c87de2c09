"""Shared fixtures: small real shards in a temp folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from infra.local.services import free_port, start_moto, stop  # noqa: E402,F401 (free_port: for tests)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free loopback port; the AWS variables point at it for the session."""
    import os

    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop(proc)


@pytest.fixture(scope="session")
def s3_shards(s3_server, demo_images) -> str:
    """The same shards as ``shards``, uploaded to a bucket of the S3 server."""
    from orchestrator.shards import build_split
    from training.data import storage

    storage.ensure_bucket("s3://test-data")
    for split in ("train", "val"):
        build_split(demo_images, "s3://test-data/demo", split, shard_size=30, workers=2)
    return "s3://test-data/demo"


def pytest_collection_modifyitems(items):
    """Tests that start a service (the S3 server fixture, or a module marked so) are marked
    ``services``; integration tests ``slow``: ``make test-unit`` leaves both out."""
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()) or "s3_shards" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
