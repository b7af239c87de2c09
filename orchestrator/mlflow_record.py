"""The sweep's MLflow record: a parent run per sweep, a child run per (arch, depth, seed).

Runs are found again by tags, never by name, so a re-submitted sweep id reuses its parent and
children: finished children are skipped, unfinished ones continue in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.endpoints import is_secret
from training.config import TrainConfig
from training.models import variant_label

TAG_SWEEP, TAG_ROLE, TAG_RUN_KEY = "depthlab.sweep_id", "depthlab.role", "depthlab.run_key"
TAG_PARENT = "mlflow.parentRunId"
TAG_DATA = "depthlab.data_name"
# MLflow 3's UI opens an experiment without a kind as a GenAI one (traces, an assistant panel);
# a training experiment opens on its runs table, the sweeps' children grouped under them.
TAG_EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# The tag alone does not move MLflow 3.17's UI off its GenAI default on a first visit: the links
# depthlab prints also ask for the model-training view.
TRAINING_VIEW = "workflowType=machine_learning"
METRICS = ("train/loss", "train/error_top1", "val/error_top1", "val/error_top5", "lr",
           "throughput/images_per_sec")
# Params the comparison relies on; the rest of the config is logged too.
_SKIP_PARAMS = {"mlflow_run_id"}


@dataclass(frozen=True)
class ChildRun:
    run_id: str
    status: str  # MLflow status: RUNNING, FINISHED, FAILED, KILLED

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"


def run_params(cfg: TrainConfig) -> dict:
    """MLflow params of a run: the config, resolved where a default applies; never a secret."""
    params = {k: v for k, v in cfg.to_dict().items() if k not in _SKIP_PARAMS and not is_secret(k)}
    # The MLflow record's contract names (docs/architecture.md): the model family as
    # "dataset", the DDP world size as "num_workers".
    params["dataset"], params["num_workers"] = cfg.family, cfg.world_size
    net = cfg.resolved_net()
    params["shortcut"] = net.shortcut
    params["stride_in_1x1"] = net.stride_in_1x1
    params["block"] = net.block
    params.update(dict(net.variant_options))
    params["shortcut_variant_resolved"] = variant_label(net) or "identity"
    params["lr_milestones"] = ",".join(str(m) for m in cfg.lr_milestones)
    return {k: ("" if v is None else str(v)) for k, v in params.items()}


class SweepTracker:
    def __init__(self, experiment: str, sweep_id: str, *, create: bool = True):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.sweep_id = sweep_id
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None and not create:
            raise LookupError(f"MLflow has no experiment named {experiment!r}")
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                experiment, tags={TAG_EXPERIMENT_KIND: TRAINING_KIND})
        else:
            self.experiment_id = exp.experiment_id
            if create and TAG_EXPERIMENT_KIND not in exp.tags:  # made before depthlab set it
                self.client.set_experiment_tag(self.experiment_id, TAG_EXPERIMENT_KIND,
                                               TRAINING_KIND)
        self.tracking_uri = mlflow.get_tracking_uri()

    def _search(self, *filters: str):
        query = " and ".join([f"tags.`{TAG_SWEEP}` = '{self.sweep_id}'", *filters])
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)

    def parent(self, spec_dict: dict) -> str:
        found = self._search(f"tags.`{TAG_ROLE}` = 'sweep'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # A re-submission may extend the grid (more seeds): each one's spec is kept.
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self.log_dict(run_id, spec_dict, f"config/resubmitted-{stamp}.yaml")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"sweep-{self.sweep_id}",
                                     tags={TAG_SWEEP: self.sweep_id, TAG_ROLE: "sweep",
                                           TAG_DATA: spec_dict.get("data_name", "")})
        self.log_dict(run.info.run_id, spec_dict, "config/sweep.yaml")
        return run.info.run_id

    def child(self, parent_id: str, cfg: TrainConfig, extra_params: dict | None = None,
              dataset: dict | None = None, role: str = "train") -> ChildRun:
        """The MLflow run of ``cfg`` in this sweep, created (with its params) if there is none.
        ``role``: "train" for the grid's runs, "tune" for the tune stage's."""
        found = self._search(f"tags.`{TAG_ROLE}` = '{role}'", f"tags.`{TAG_RUN_KEY}` = '{cfg.run_name}'")
        if found:
            return ChildRun(found[0].info.run_id, found[0].info.status)
        run = self.client.create_run(
            self.experiment_id, run_name=cfg.run_name,
            tags={TAG_SWEEP: self.sweep_id, TAG_ROLE: role, TAG_RUN_KEY: cfg.run_name,
                  TAG_PARENT: parent_id, "arch": cfg.arch, "depth": str(cfg.depth)},
        )
        run_id = run.info.run_id
        from mlflow.entities import Param

        params = {**run_params(cfg), **{k: str(v) for k, v in (extra_params or {}).items()}}
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self.log_dict(run_id, cfg.to_dict(), "config/run.json")
        if dataset:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            self.client.log_inputs(run_id, datasets=[DatasetInput(
                Dataset(name=dataset["name"], digest=dataset["digest"], source_type="webdataset",
                        source=json.dumps({"uri": cfg.data_url})),
                tags=[InputTag("mlflow.data.context", "training")])])
        return ChildRun(run_id, "RUNNING")

    def find_parent(self):
        """The sweep's parent run, or None."""
        found = self._search(f"tags.`{TAG_ROLE}` = 'sweep'")
        return found[0] if found else None

    def children(self, role: str = "train") -> list:
        return self._search(f"tags.`{TAG_ROLE}` = '{role}'")

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                               for k, v in metrics.items()])

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_status(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def mark_running(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def last_json(self, run_id: str, folder: str) -> dict | None:
        """The last (by name) JSON artifact under ``folder`` of a run, or None."""
        try:
            names = sorted(a.path for a in self.client.list_artifacts(run_id, folder)
                           if a.path.endswith(".json"))
            if not names:
                return None
            import mlflow.artifacts

            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{names[-1]}")
        except Exception:  # an artifact store that cannot be read: the figure is left out
            return None

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            if artifact_file.endswith((".yaml", ".yml")):
                import yaml

                path.write_text(yaml.safe_dump(data, sort_keys=False))
            else:
                path.write_text(json.dumps(data, indent=1))
            self.client.log_artifact(run_id, str(path), os.path.dirname(artifact_file) or None)

    def log_files(self, run_id: str, files: list[Path], artifact_dir: str) -> None:
        for f in files:
            self.client.log_artifact(run_id, str(f), artifact_dir)

    def compare_url(self, run_ids: list[str]) -> str:
        """The MLflow UI's side-by-side view of the given runs."""
        from urllib.parse import quote

        return (f"{self.tracking_uri.rstrip('/')}/#/compare-runs?runs={quote(json.dumps(run_ids))}"
                f"&experiments={quote(json.dumps([self.experiment_id]))}")

    def ui_url(self, run_id: str | None = None) -> str:
        """The experiment's runs table (or one run's page) in the model-training view."""
        base = f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}"
        return f"{base}/runs/{run_id}?{TRAINING_VIEW}" if run_id else f"{base}/runs?{TRAINING_VIEW}"
