"""The node-type scorer of the AWS cluster's autoscaler: spot first, on-demand when spot fails.

Ray's v1 autoscaler picks the node type with the highest score for the pending demand, and
among equal scores the first by name, whatever happened to its last launches; so a spot type
and its on-demand twin of the same shape would always resolve to the spot one, available or
not. Ray takes the scorer from ``RAY_AUTOSCALER_UTILIZATION_SCORER`` (infra/aws/cluster.yaml
sets it to ``utilization_scorer`` below) and hands it the launch failures it recorded in the
last ``AUTOSCALER_NODE_AVAILABILITY_MAX_STALENESS_S`` (30 minutes by default). This scorer keeps
Ray's own score and puts two things around it: a type whose last launch failed ranks below
every available type, and among equal scores a spot type ranks above an on-demand one.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

# Where `ray up` leaves the cluster config on the head node (the launcher's convention).
BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"


def spot_node_types(config: dict) -> frozenset[str]:
    """The node types of a cluster-launcher config that launch as EC2 spot instances."""
    types = config.get("available_node_types") or {}
    return frozenset(
        name for name, node_type in types.items()
        if ((node_type.get("node_config") or {}).get("InstanceMarketOptions") or {})
        .get("MarketType", "").lower() == "spot")


@lru_cache(maxsize=1)
def _spot_types_of(path: str) -> frozenset[str]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return frozenset()
    return spot_node_types(config) if isinstance(config, dict) else frozenset()


def ranked(base_score: tuple | None, *, available: bool, spot: bool) -> tuple | None:
    """Ray's score with availability put first and spot last (the tie-breaker)."""
    if base_score is None:  # the type cannot hold any of the demand
        return None
    gpu_ok, *rest = base_score
    return (gpu_ok, available, *rest, spot)


def utilization_scorer(node_resources, resources, node_type, *, node_availability_summary):
    """The scorer Ray's autoscaler calls for each node type (its ``UtilizationScorer``)."""
    from orchestrator.ray_internals import utilization_score

    base = utilization_score(node_resources, resources,
                             node_availability_summary=node_availability_summary)
    record = node_availability_summary.node_availabilities.get(node_type)
    config = os.environ.get("DEPTHLAB_AUTOSCALER_CONFIG") or str(BOOTSTRAP_CONFIG)
    return ranked(base, available=record is None or record.is_available,
                  spot=node_type in _spot_types_of(config))
