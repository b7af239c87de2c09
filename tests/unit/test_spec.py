from pathlib import Path

import pytest

from orchestrator.spec import SpecError, apply_overrides, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


def test_demo_spec_expands_into_six_two_worker_runs():
    spec = load_spec(DEMO)
    runs = spec.runs()
    assert [r.run_name for r in runs][:2] == ["plain-8-s0", "plain-14-s0"]
    assert len(runs) == 6 and {r.world_size for r in runs} == {2}
    assert {r.arch for r in runs} == {"plain", "residual", "preact"}
    assert all(r.family == "cifar" and r.per_worker_batch_size == 64 for r in runs)


def test_overrides_parse_yaml_values():
    spec = load_spec(DEMO, ["grid.depth=[8]", "train.epochs=1", "cluster.workers_per_run=1"])
    assert spec.depths == (8,) and spec.runs()[0].epochs == 1 and spec.runs()[0].world_size == 1


def test_round_trip_through_to_dict():
    spec = load_spec(DEMO)
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("overrides,match", [
    (["grid.depth=[18]"], "6n\\+2"),
    (["grid.width=[2]"], "unknown key.*grid"),
    (["train.learning_rate=0.1"], "unknown key.*train"),
    (["colour=blue"], "unknown key.*spec"),
    (["train.global_batch_size=127"], "not divisible"),
    (["cluster.workers_per_run=0"], "positive integer"),
    (["grid.arch=[dense]"], "plain, residual, bn_after_add"),
    (["train.epochs=0"], "positive integer"),
    (["train.augment=autoaugment"], "cifar, imagenet"),
    (["train.lr_milestones=[0.8,0.2]"], "increasing"),
])
def test_bad_specs_give_one_clear_message(overrides, match):
    with pytest.raises(SpecError, match=match):
        load_spec(DEMO, overrides)


def test_malformed_override_and_missing_file():
    with pytest.raises(SpecError, match="key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(SpecError, match="cannot read config"):
        load_spec(REPO / "configs" / "nope.yaml")


@pytest.mark.parametrize("name", ["demo", "cifar10_paper", "imagenet_table2", "imagenet_deep"])
def test_every_shipped_config_is_valid(name):
    spec = load_spec(REPO / "configs" / f"{name}.yaml")
    runs = spec.runs()
    assert runs and all(r.global_batch_size % r.world_size == 0 for r in runs)


def test_paper_configs_carry_the_papers_recipes():
    table2 = load_spec(REPO / "configs" / "imagenet_table2.yaml").runs()
    assert {r.shortcut for r in table2} == {"A"} and {r.recipe for r in table2} == {"imagenet_paper"}
    assert {r.depth for r in table2} == {18, 34} and table2[0].eval_crops == 10
    cifar = load_spec(REPO / "configs" / "cifar10_paper.yaml").runs()
    assert cifar[0].max_steps == 64000 and cifar[0].warmup_steps == 400


def test_dry_run_estimate_matches_a_known_training_cost():
    from orchestrator.sweep import estimate_hours, plan_rows

    spec = load_spec(REPO / "configs" / "imagenet_deep.yaml", ["grid.arch=[residual]", "grid.depth=[50]"])
    (row,) = plan_rows(spec)
    # ResNet-50, 90 epochs of 1.28M images at NVIDIA's A100 rate (2,470 images/s): about 13 h.
    assert estimate_hours(row, 1_281_167, 60.0) == pytest.approx(1_281_167 * 90 / 2470 / 3600, rel=0.15)


def test_capacity_problem_names_what_is_missing():
    from orchestrator.spec import ClusterSpec
    from orchestrator.capacity import capacity_problem

    assert capacity_problem(ClusterSpec(workers_per_run=2), {"CPU": 2.0}) is None
    level, msg = capacity_problem(ClusterSpec(workers_per_run=8, use_gpu=True),
                                  {"CPU": 16.0, "GPU": 4.0})
    assert level == "warning" and "8 GPU (the cluster has 4)" in msg and "autoscaler" in msg


def test_a_run_larger_than_the_cluster_can_ever_grow_is_an_error():
    from orchestrator.spec import ClusterSpec
    from orchestrator.capacity import capacity_problem

    gpus8 = ClusterSpec(workers_per_run=8, use_gpu=True, cpus_per_worker=4)
    # An autoscaler that can add up to 2 nodes of 4 GPUs: the run waits for it.
    level, msg = capacity_problem(gpus8, {"CPU": 8.0}, {"CPU": 104.0, "GPU": 8.0})
    assert level == "warning" and "0 GPU" not in msg and "8 GPU (the cluster has now 0)" in msg
    # One node of 4 GPUs at most: the run could never be placed.
    level, msg = capacity_problem(gpus8, {"CPU": 8.0}, {"CPU": 56.0, "GPU": 4.0})
    assert level == "error" and "8 GPU (the cluster can grow to at most 4)" in msg
    assert "never" in msg and "CPU" not in msg.split(":")[0]  # 32 CPUs fit: not named
    # Within the present size: nothing to say, whatever the ceiling.
    assert capacity_problem(ClusterSpec(workers_per_run=2), {"CPU": 4.0}, {"CPU": 4.0}) is None


def test_the_ceiling_of_a_cluster_launcher_config():
    import yaml

    from orchestrator.capacity import ceiling_from_autoscaler_config

    aws = yaml.safe_load((REPO / "infra" / "aws" / "cluster.yaml").read_text())
    # head (0 CPU) + 8 and 4 g6.12xlarge (48 CPU, 4 GPU) + 4 p4d.24xlarge (96 CPU, 8 GPU)
    assert ceiling_from_autoscaler_config(aws) == {"CPU": 12 * 48 + 4 * 96.0, "GPU": 12 * 4 + 4 * 8.0}
    local = yaml.safe_load((REPO / "infra" / "local" / "fake_autoscaler.yaml").read_text())
    local["available_node_types"]["ray.head.default"]["resources"] = {"CPU": 2}
    assert ceiling_from_autoscaler_config(local) == {"CPU": 4.0, "gpu_slot": 2.0}
    # A worker type whose size Ray detects at start: the ceiling is unknown, not zero.
    aws["available_node_types"]["gpu_large"]["resources"] = {}
    assert ceiling_from_autoscaler_config(aws) is None


def test_resources_per_worker_are_checked_and_counted():
    from orchestrator.capacity import run_resources
    from orchestrator.spec import ClusterSpec, SpecError

    spec = ClusterSpec(workers_per_run=3, resources_per_worker={"gpu_slot": 1})
    assert run_resources(spec) == {"CPU": 3.0, "gpu_slot": 3}
    for bad in ({"gpu_slot": 0}, {"GPU": 1}, ["gpu_slot"], {"x": True}):
        with pytest.raises(SpecError, match="resources_per_worker"):
            ClusterSpec(resources_per_worker=bad)


def test_grid_exclude_drops_pairs_and_names_typos():
    from orchestrator.spec import SpecError

    spec = load_spec(REPO / "configs" / "demo.yaml", ["grid.exclude=[preact-8]"])
    names = [c.run_name for c in spec.runs()]
    assert "preact-8-s0" not in names and "preact-14-s0" in names and len(names) == 5
    assert spec.to_dict()["grid"]["exclude"] == ["preact-8"]
    with pytest.raises(SpecError, match="'preact-9' is not a run of the grid"):
        load_spec(REPO / "configs" / "demo.yaml", ["grid.exclude=[preact-9]"])


def test_a_config_left_with_its_placeholders_is_refused_with_the_key_to_set():
    from orchestrator.sweep import check_services, placeholder_problems

    spec = load_spec(REPO / "configs" / "imagenet_table2.yaml")
    problems = check_services(spec)
    assert problems == placeholder_problems(spec) and len(problems) == 2
    assert any(p.startswith("train.data_url is 's3://YOUR-PREFIX-data/imagenet': replace the "
                            "placeholder with --set train.data_url=") for p in problems)
    assert any(p.startswith("cluster.storage_path is") for p in problems)
    filled = load_spec(REPO / "configs" / "imagenet_table2.yaml",
                       ["train.data_url=s3://acme-data/imagenet",
                        "cluster.storage_path=s3://acme-checkpoints/ray"])
    assert placeholder_problems(filled) == []


def test_a_grid_varies_model_options_like_arch_and_depth():
    from orchestrator.spec import SpecError

    spec = load_spec(REPO / "configs" / "demo.yaml", [
        "grid.arch=[plain,residual]", "grid.depth=[8]",
        "grid.variant=[identity, {shortcut_variant: exclusive_gating, gate_bias: -6}, {shortcut: B}]",
        "grid.exclude=[plain-8-exclusive_gating-gate_bias=-6, plain-8-shortcut=B]"])
    runs = {c.run_name: c for c in spec.runs()}
    assert sorted(runs) == ["plain-8-identity-s0", "residual-8-exclusive_gating-gate_bias=-6-s0",
                            "residual-8-identity-s0", "residual-8-shortcut=B-s0"]
    gated = runs["residual-8-exclusive_gating-gate_bias=-6-s0"]
    assert gated.variant == "exclusive_gating gate_bias=-6" and gated.gate_bias == -6
    assert gated.model_options()["shortcut_variant"] == "exclusive_gating"
    assert runs["residual-8-shortcut=B-s0"].resolved_shortcut() == "B"
    assert spec.to_dict()["grid"]["variant"][1] == {"shortcut_variant": "exclusive_gating",
                                                    "gate_bias": -6}
    with pytest.raises(SpecError, match="original unit"):  # a variant of another unit
        load_spec(REPO / "configs" / "demo.yaml", ["grid.variant=[dropout]"])
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['gate'\] in grid.variant\[0\]"):
        load_spec(REPO / "configs" / "demo.yaml", ["grid.variant=[{gate: 1}]"])
    with pytest.raises(SpecError, match="same variant twice"):
        load_spec(REPO / "configs" / "demo.yaml", ["grid.variant=[dropout, dropout]"])


def test_a_renamed_key_still_works_for_a_version_with_a_note(capsys):
    from training.config import TrainConfig, _told

    import yaml

    from orchestrator.spec import spec_from_dict

    _told.clear()
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["train"]["dataset"] = raw["train"].pop("family")
    assert spec_from_dict(raw).runs()[0].family == "cifar"
    assert "train.dataset is now train.family" in capsys.readouterr().err
    old = TrainConfig.from_dict({"dataset": "imagenet", "num_workers": 2, "depth": 18,
                                 "global_batch_size": 64})
    assert old.family == "imagenet" and old.world_size == 2
    with pytest.raises(ValueError, match="give only family"):
        TrainConfig.from_dict({"dataset": "cifar", "family": "cifar"})
