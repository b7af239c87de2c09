"""The three private Ray entry points depthlab uses (orchestrator/ray_internals.py), held to
the contract depthlab relies on: these fail when an upgrade of Ray changes one of them."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from orchestrator import ray_internals

REPO = Path(__file__).resolve().parents[2]


def test_the_published_ceiling_reader_exists_and_means_not_published_without_a_cluster():
    from ray._private.state import state

    assert list(inspect.signature(state.get_max_resources_from_cluster_config).parameters) == []
    assert ray_internals.published_max_resources() is None  # no driver connected here


def test_the_kuberay_reader_fetches_the_named_raycluster_and_derives_rays_view(monkeypatch):
    from ray.autoscaler._private.kuberay import node_provider

    raycluster = yaml.safe_load((REPO / "infra" / "k8s" / "raycluster.yaml").read_text())
    asked = []

    class KubernetesApi:  # the one part that needs a cluster: the HTTP read of the object
        def __init__(self, namespace, **kwargs):
            asked.append(("namespace", namespace))

        def get(self, path):
            asked.append(("get", path))
            return raycluster

    monkeypatch.setattr(node_provider, "KubernetesHttpApiClient", KubernetesApi)
    config = ray_internals.kuberay_autoscaling_config("depthlab", "research")
    assert asked == [("namespace", "research"), ("get", "rayclusters/depthlab")]
    gpu_groups = [t for t in config["available_node_types"].values()
                  if t["resources"].get("GPU")]
    assert gpu_groups and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu_groups)


def test_rays_utilization_score_has_the_shape_the_spot_fallback_reorders():
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )

    summary = NodeAvailabilitySummary(node_availabilities={})
    fits = ray_internals.utilization_score({"CPU": 48, "GPU": 4}, [{"CPU": 8, "GPU": 1}] * 4,
                                           node_availability_summary=summary)
    # (GPU-ok flag, ...): spot_fallback.ranked puts availability right after the flag
    assert isinstance(fits, tuple) and fits[0] is True and len(fits) >= 2
    assert ray_internals.utilization_score({"CPU": 4}, [{"GPU": 1}],
                                           node_availability_summary=summary) is None
