"""Bad input, one clear message each: the table of what a user can get wrong.

Configs and services go through the real command line (``compare_depths.main`` with
``--dry-run``), data through the loader's own entry points. Every case must end in a non-zero
exit or a ``StorageError`` whose message names the problem, never a traceback. Bad samples
inside good shards (corrupt or truncated JPEG, truncated tar, missing label) are skipped and
counted rather than refused: tests/unit/test_data.py covers them.
"""

from __future__ import annotations

import json

import pytest
from conftest import free_port

from training.data import storage

BROKEN_YAML = "experiment: x\ngrid: {arch: [plain], depth: [8]\n"

# (case, arguments after --dry-run, message the user gets)
CONFIG_CASES = [
    ("config file missing", ["--config", "{tmp}/nope.yaml"], "cannot read config"),
    ("config not YAML", ["--config", "{tmp}/broken.yaml"], "is not valid YAML"),
    ("unknown top-level key", ["--set", "foo=1"], "unknown key(s) ['foo'] in the spec"),
    ("unknown training key", ["--set", "train.lrr=0.1"], "unknown key(s) ['lrr'] in train"),
    ("unknown cluster key", ["--set", "cluster.gpus=1"], "unknown key(s) ['gpus']"),
    ("--set without =", ["--set", "grid"], "--set expects key=value"),
    ("CIFAR depth that is not 6n+2", ["--set", "grid.depth=[18]"], "cifar depth 18"),
    ("ImageNet depth that does not exist", ["--set", "train.family=imagenet", "--set", "grid.depth=[42]"],
     "depth 42"),
    ("unknown architecture", ["--set", "grid.arch=[dense]"], "unknown arch 'dense'"),
    ("unknown shortcut", ["--set", "train.shortcut=D"], "unknown shortcut 'D'"),
    ("unknown recipe", ["--set", "train.recipe=fast"], "unknown recipe 'fast'"),
    ("a number that is not one", ["--set", "train.lr=abc"], "lr must be a number, got 'abc'"),
    ("a negative count", ["--set", "train.epochs=-1"], "epochs must be a positive integer"),
    ("milestones out of order", ["--set", "train.lr_milestones=[0.8,0.5]"], "lr_milestones must be increasing"),
    ("batch not divisible by workers", ["--set", "cluster.workers_per_run=3"], "not divisible by the world size 3"),
    ("GPUs asked with zero per worker", ["--set", "cluster.use_gpu=true", "--set", "cluster.gpus_per_worker=0"],
     "gpus_per_worker must be > 0"),
    ("cluster field of the wrong type", ["--set", "cluster.cpus_per_worker=x"],
     "cluster.cpus_per_worker must be a number"),
    ("custom resource that is not a count", ["--set", "cluster.resources_per_worker={{gpu_slot: 0}}"],
     "resources_per_worker must map resource names to positive numbers"),
    ("10-crop with CIFAR augmentation", ["--set", "train.eval_crops=10"], "eval_crops=10 needs an imagenet augment"),
]

SERVICE_CASES = [
    ("data folder without shards", ["--set", "train.data_url={tmp}/no-data"], "no train manifest under"),
    ("bucket that does not exist", ["--set", "train.data_url=s3://no-such-bucket/data"], "no-such-bucket"),
    ("MLflow not answering", [], "MLflow tracking server http://127.0.0.1:{dead} does not answer"),
]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``compare_depths --dry-run ARGS`` in-process, away from any running local stack."""
    from pipelines import compare_depths

    (tmp_path / "broken.yaml").write_text(BROKEN_YAML)
    dead = free_port()  # nothing listens there
    monkeypatch.setenv("DEPTHLAB_STATE_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{dead}")

    def call(args):
        args = [a.format(tmp=tmp_path, dead=dead) for a in args]
        code = compare_depths.main(["--dry-run", *args])
        out = capsys.readouterr()
        return code, out.out + out.err, dead

    return call


@pytest.mark.parametrize("case,args,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_gets_one_clear_message(cli, case, args, message):
    code, text, _ = cli(args)
    assert code == 2, text
    assert message in text and "Traceback" not in text
    assert len([line for line in text.splitlines() if "bad config" in line]) == 1


@pytest.mark.parametrize("case,args,message", SERVICE_CASES, ids=[c[0] for c in SERVICE_CASES])
def test_unreachable_data_or_services_are_named_before_anything_starts(cli, s3_server, case, args, message):
    code, text, dead = cli(args)
    assert code == 1, text
    assert message.format(dead=dead) in text and "Traceback" not in text
    assert "dry run: services NOT ready" in text


def test_broken_manifests_and_missing_shards_are_one_error(shards, tmp_path):
    from training.data import build_loader, read_manifest

    cases = {}
    bad_json = tmp_path / "bad-json" / "train"
    bad_json.mkdir(parents=True)
    (bad_json / "manifest.json").write_text("{not json")
    cases["manifest not JSON"] = (str(tmp_path / "bad-json"), "is not valid JSON")
    empty = tmp_path / "empty" / "train"
    empty.mkdir(parents=True)
    (empty / "manifest.json").write_text(json.dumps({"shards": []}))
    cases["manifest without shards"] = (str(tmp_path / "empty"), "lists no shards")
    cases["no manifest"] = (str(tmp_path / "nothing"), "no usable manifest for split 'train'")
    for case, (url, message) in cases.items():
        with pytest.raises(storage.StorageError, match=message):
            read_manifest(url, "train")

    # A manifest naming a shard that is gone: the epoch stops with the shard's name.
    import shutil

    gone = tmp_path / "gone"
    shutil.copytree(shards, gone)
    manifest = json.loads((gone / "train" / "manifest.json").read_text())
    (gone / "train" / manifest["shards"][-1]["name"]).unlink()
    # 160 samples in batches of 16: no remainder, so every shard is read.
    loader = build_loader(str(gone), "train", batch_size=16, rank=0, world_size=1, epoch=0,
                          image_size=16, augment="cifar", loader_workers=0)
    with pytest.raises(storage.StorageError, match=manifest["shards"][-1]["name"]):
        for _ in loader:
            pass
