import os

from orchestrator.endpoints import apply_local_stack_defaults, is_secret, worker_env
from orchestrator.mlflow_record import run_params
from training.config import TrainConfig


def test_params_hold_the_contract_names_and_resolved_defaults():
    params = run_params(TrainConfig(arch="plain", depth=20, world_size=2, global_batch_size=128))
    for key in ("arch", "depth", "dataset", "shortcut", "global_batch_size", "num_workers"):
        assert key in params
    assert params["shortcut"] == "A" and params["num_workers"] == "2"
    assert "mlflow_run_id" not in params


def test_worker_env_passes_endpoints_never_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    env = worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert not any(is_secret(k) for k in env) and "s3cr3t" not in env.values()


def test_stack_defaults_never_override_the_users_variables(monkeypatch, tmp_path):
    (tmp_path / "stack.json").write_text(
        '{"env": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5", "AWS_ENDPOINT_URL": "http://127.0.0.1:6"}}')
    monkeypatch.setenv("DEPTHLAB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mine")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert apply_local_stack_defaults() == ["AWS_ENDPOINT_URL"]
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mine"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:6"


def test_params_say_which_variant_a_run_is_and_the_report_reads_it_back():
    from types import SimpleNamespace

    from orchestrator.report import records_from_mlflow

    cfg = TrainConfig(arch="residual", depth=20, shortcut_variant="exclusive_gating",
                      variant="exclusive_gating")
    params = run_params(cfg)
    assert params["shortcut_variant"] == "exclusive_gating" and params["gate_bias"] == "-6.0"
    assert params["shortcut_variant_resolved"] == "exclusive_gating gate_bias=-6"
    assert params["variant"] == "exclusive_gating" and params["stride_in_1x1"] == "True"
    run = SimpleNamespace(data=SimpleNamespace(params=params, tags={}),
                          info=SimpleNamespace(status="FINISHED", run_id="r1"))
    tracker = SimpleNamespace(children=lambda: [run], history=lambda run_id, key: [(1, 5.0)],
                              last_json=lambda run_id, folder: {"layers": ["conv1"], "std": [0.5]})
    (record,) = records_from_mlflow(tracker)
    assert record.net_variant == "exclusive_gating gate_bias=-6" and record.variant == "exclusive_gating"
    assert record.shortcut == "A" and record.eval_crops == 1 and record.responses["std"] == [0.5]
    plain = run_params(TrainConfig(arch="plain", depth=20))
    assert plain["shortcut_variant_resolved"] == "identity" and "gate_bias" in plain
