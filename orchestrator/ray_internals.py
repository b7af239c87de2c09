"""Where depthlab reaches into Ray's private modules: three things Ray 2.60 offers no public API
for. Each is wrapped here, once, and `tests/unit/test_ray_internals.py` fails when Ray changes
one of them (a rename, a new signature, another return shape), so an upgrade of Ray shows what
to fix instead of a cluster quietly losing its capacity check or its spot fallback.
"""

from __future__ import annotations


def published_max_resources() -> dict[str, float] | None:
    """The most resources the cluster can ever hold, as an autoscaler published them in the
    GCS (what Ray Train checks before placing workers), or None where none did. Needs a
    connected driver; any failure of the private call means "not published"."""
    try:
        from ray._private.state import state

        published = state.get_max_resources_from_cluster_config()
    except Exception:
        return None
    return {k: float(v) for k, v in published.items()} if published else None


def kuberay_autoscaling_config(name: str, namespace: str) -> dict:
    """The autoscaling config Ray's KubeRay autoscaler derives from the RayCluster ``name`` in
    ``namespace``, read through the Kubernetes API with the pod's service account. Raises when
    the cluster cannot be read (no API access, an RBAC refusal)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import AutoscalingConfigProducer

    return AutoscalingConfigProducer(name, namespace)()


def utilization_score(node_resources, resources, *, node_availability_summary):
    """Ray's own score of a node type for the pending demand (a tuple; higher is better, None
    when the type cannot hold any of it): what ``orchestrator.spot_fallback`` reorders."""
    from ray.autoscaler._private.resource_demand_scheduler import (
        _resource_based_utilization_scorer,
    )

    return _resource_based_utilization_scorer(
        node_resources, resources, node_availability_summary=node_availability_summary)
