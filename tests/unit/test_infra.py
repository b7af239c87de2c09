"""The cluster definitions parse and follow the rules a cluster relies on."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_aws_cluster_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "infra" / "aws" / "cluster.yaml").read_text())
    validate_config(config)  # raises on any violation of ray-schema.json
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no training on the head
    gpu = [t for n, t in types.items() if n != config["head_node_type"]]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu)
    assert any(t["node_config"].get("InstanceMarketOptions") for t in gpu)  # spot
    assert any(not t["node_config"].get("InstanceMarketOptions") for t in gpu)  # on-demand
    assert all("RAY_AUTH_MODE=token" in c for c in
               config["head_start_ray_commands"] + config["worker_start_ray_commands"])


def test_kuberay_manifests_autoscale_a_gpu_group_from_zero():
    cluster = yaml.safe_load((REPO / "infra" / "k8s" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["enableInTreeAutoscaling"]
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] > 0
    pod = gpu["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]
    job = yaml.safe_load((REPO / "infra" / "k8s" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "pipelines/compare_depths.py" in job["spec"]["entrypoint"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
