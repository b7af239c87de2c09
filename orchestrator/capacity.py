"""Whether one run of a sweep fits the cluster: now, and ever (after the autoscaler has added
every node it may). Pure functions; ``orchestrator.launcher`` asks Ray for the figures."""

from __future__ import annotations


def ceiling_from_autoscaler_config(config: dict) -> dict | None:
    """The most resources a cluster-launcher config lets the cluster hold: the head's plus each
    worker type's ``resources`` times its ``max_workers``. An upper bound (the global
    ``max_workers`` may stop short of every type's maximum); None when a worker type leaves its
    resources to detection, since its size is then unknown."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total: dict[str, float] = {}
    for name, node_type in types.items():
        resources = node_type.get("resources") or {}
        count = 1 if name == head else int(node_type.get("max_workers", 0))
        if count and not resources:
            return None
        for key, amount in resources.items():
            total[key] = total.get(key, 0.0) + count * float(amount)
    return total or None


def run_resources(cluster) -> dict:
    """What one run (all its workers, gang-scheduled) takes from the cluster."""
    need = {"CPU": cluster.workers_per_run * cluster.cpus_per_worker}
    if cluster.use_gpu:
        need["GPU"] = cluster.workers_per_run * cluster.gpus_per_worker
    for name, amount in cluster.resources_per_worker.items():
        need[name] = cluster.workers_per_run * amount
    return need


def capacity_problem(cluster, now: dict, ceiling: dict | None = None) -> tuple[str, str] | None:
    """``("error" | "warning", why)`` when one run of the sweep does not fit the cluster.

    ``now`` is what the cluster holds at the moment; ``ceiling`` the most it can ever hold (the
    autoscaler's node types times their max counts, as Ray publishes them), None when unknown.
    A run beyond the ceiling can never start, so it is an error before anything launches; a run
    beyond the present size waits for the autoscaler (the queued demand is what makes it scale).
    """
    need = run_resources(cluster)

    def shortfall(have: dict, verb: str) -> str:
        return ", ".join(f"{v:g} {k} (the cluster {verb} {have.get(k, 0):g})"
                         for k, v in need.items() if have.get(k, 0) < v)

    if ceiling is not None and shortfall(ceiling, ""):
        return ("error", "one run needs " + shortfall(ceiling, "can grow to at most")
                + ": it could never start. Lower cluster.workers_per_run or the per-worker "
                "resources, or raise the autoscaler's max_workers")
    if shortfall(now, ""):
        if ceiling is not None:
            return ("warning", "one run needs " + shortfall(now, "has now")
                    + ": runs wait while the autoscaler adds nodes")
        return ("warning", "one run needs " + shortfall(now, "has")
                + ": runs will wait until an autoscaler adds nodes; without one they never "
                "start (lower cluster.workers_per_run or the per-worker resources)")
    return None
