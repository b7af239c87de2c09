"""Everything the driver does with Ray: connect, and run one training run as a TorchTrainer."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator import ray_internals
from orchestrator.capacity import ceiling_from_autoscaler_config
from orchestrator.endpoints import REPO_ROOT, worker_env
from orchestrator.spec import ClusterSpec
from training.data import storage
from training.config import TrainConfig


class ClusterError(RuntimeError):
    pass


def connect() -> None:
    """Join the Ray cluster named by ``RAY_ADDRESS`` (the embedded stack's by default)."""
    import ray

    if ray.is_initialized():
        return
    runtime_env: dict = {"env_vars": worker_env()}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        # Not inside `ray job submit`: ship this checkout so the workers run the same code.
        runtime_env.update(working_dir=str(REPO_ROOT), excludes=[".git", "bench/results", "*.png"])
    address = os.environ.get("RAY_ADDRESS") or "auto"
    # ray.init replaces the SIGTERM handler with a plain exit; a driver that set its own
    # (compare_depths: stop as on Ctrl-C, the record marked KILLED) keeps it.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING",
                 log_to_driver=True)
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address}: {exc}. Start the local stack with "
            "`make up`, or set RAY_ADDRESS to your cluster"
        ) from None
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def cluster_capacity() -> dict:
    import ray

    return ray.cluster_resources()


def cluster_ceiling() -> dict | None:
    """The most resources the cluster can ever hold, or None where that is unknown.

    Read from, in order: the node types an autoscaler published in the GCS (the figure Ray
    Train checks before placing workers; Ray 2.60's autoscalers do not publish it yet); on
    KubeRay, the RayCluster itself, through Ray's own reader of it (KubeRay names the cluster
    in every Ray pod's environment and lets the head's service account read it); else the
    cluster launcher's config, from ``DEPTHLAB_AUTOSCALER_CONFIG`` (the local stack sets it) or
    where the launcher puts it on the head, ``~/ray_bootstrap_config.yaml``.
    """
    published = ray_internals.published_max_resources()
    if published:
        return published
    if os.environ.get("RAY_CLUSTER_NAME") and os.environ.get("RAY_CLUSTER_NAMESPACE"):
        config = kuberay_autoscaling_config(os.environ["RAY_CLUSTER_NAME"],
                                            os.environ["RAY_CLUSTER_NAMESPACE"])
        return ceiling_from_autoscaler_config(config) if config else None
    path = Path(os.environ.get("DEPTHLAB_AUTOSCALER_CONFIG")
                or Path.home() / "ray_bootstrap_config.yaml")
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return ceiling_from_autoscaler_config(config) if isinstance(config, dict) else None


def kuberay_autoscaling_config(name: str, namespace: str) -> dict | None:
    """The autoscaling config Ray's KubeRay autoscaler derives from the RayCluster ``name``
    (read through the Kubernetes API with the pod's service account), or None when it cannot
    be read: the capacity check then only warns."""
    try:
        return ray_internals.kuberay_autoscaling_config(name, namespace)
    except Exception as exc:  # no API access, an RBAC refusal, a Ray without the reader
        print(f"note: cannot read RayCluster {namespace}/{name} for its node types ({exc}); "
              "a run too big for the cluster will wait instead of being refused", flush=True)
        return None


def storage_location(path: str):
    """``(storage_path, filesystem)`` for Ray Train. pyarrow ignores ``AWS_ENDPOINT_URL``, so an
    S3 filesystem with the endpoint set explicitly is built here."""
    if not storage.is_s3(path):
        return path, None
    import pyarrow.fs

    bucket, key = storage.split_s3(path)
    options = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_override"] = endpoint
        options["scheme"] = "https" if endpoint.startswith("https") else "http"
    return f"{bucket}/{key}".rstrip("/"), pyarrow.fs.S3FileSystem(**options)


@dataclass(frozen=True)
class RunOutcome:
    run_name: str
    ok: bool
    metrics: dict
    error: str = ""


def run_training(cfg: TrainConfig, cluster: ClusterSpec, sweep_id: str) -> RunOutcome:
    """Run one (arch, depth, seed) on Ray Train and wait for it.

    The Ray Train run name is derived from the sweep id and the run, so submitting the same
    sweep again resumes it from its newest checkpoint in ``storage_path``.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.ray_worker import train_func

    resources = {"CPU": cluster.cpus_per_worker, **cluster.resources_per_worker}
    if cluster.use_gpu:
        resources["GPU"] = cluster.gpus_per_worker
    path, filesystem = storage_location(cluster.storage_path)
    trainer = TorchTrainer(
        train_func,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.world_size, use_gpu=cluster.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{sweep_id}-{cfg.run_name}", storage_path=path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # a run that fails beyond its retries must not stop the sweep
        return RunOutcome(cfg.run_name, False, {}, f"{type(exc).__name__}: {exc}")
    if result.error:
        return RunOutcome(cfg.run_name, False, dict(result.metrics or {}), str(result.error))
    return RunOutcome(cfg.run_name, True, dict(result.metrics or {}))
