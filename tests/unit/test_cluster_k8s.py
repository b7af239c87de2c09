"""The Kubernetes path, rehearsed offline: every manifest against the object models, the
RayCluster as Ray's own KubeRay autoscaler reads it, and the guide's commands in their order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from k8s_schema import KUBERAY_VERSION, problems

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
GUIDE = REPO / "docs" / "cluster.md"


def manifests() -> dict[str, list[dict]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(K8S.glob("*.yaml"))}


def raycluster() -> dict:
    return yaml.safe_load((K8S / "raycluster.yaml").read_text())


def guide_block(marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in docs/cluster.md."""
    text = GUIDE.read_text().split(f"<!-- {marker} -->", 1)[1]
    return text.split("```", 2)[1].split("\n", 1)[1]


def commands(block: str) -> list[str]:
    """Shell commands of a guide block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #", 1)[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_every_manifest_passes_the_kubernetes_and_kuberay_schemas(name):
    for doc in manifests()[name]:
        assert problems(doc) == [], f"{name}: {doc.get('kind')}"


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["spec"].update(authOption={"mode": "token"}), "spec.authOption: unknown field"),
    (lambda c: c["spec"]["authOptions"].update(mode="tokens"), "'tokens' is not one of"),
    (lambda c: c["spec"]["workerGroupSpecs"][0].update(maxReplicas="8"), "expected int"),
    (lambda c: c["spec"]["workerGroupSpecs"][0].pop("minReplicas"), "minReplicas: required"),
    (lambda c: c["spec"]["workerGroupSpecs"][0]["template"]["spec"].update(nodeSelecter={}),
     "nodeSelecter: unknown field of V1PodSpec"),
    (lambda c: c["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"),
     "Invalid value for `name`, must not be `None`"),
])
def test_the_schema_check_catches_what_it_is_for(mutate, expected):
    cluster = raycluster()
    mutate(cluster)
    assert any(expected in p for p in problems(cluster)), problems(cluster)


def autoscaler_view() -> dict:
    """What Ray's KubeRay autoscaler (in the head pod's sidecar) derives from the RayCluster."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    return _derive_autoscaling_config_from_ray_cr(raycluster())


def test_the_autoscaler_sees_a_gpu_group_that_scales_from_zero_and_a_head_without_cpus():
    config = autoscaler_view()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    (gpu,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] == 8
    assert gpu["resources"]["GPU"] == 4 and gpu["resources"]["CPU"] == 44


def test_the_cluster_runs_with_token_authentication_managed_by_kuberay():
    spec = raycluster()["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "depthlab-ray-token"}
    # KubeRay gives every container (the autoscaler sidecar and submitters included) the
    # token from that Secret: a token set by hand would shadow it in Ray's own containers.
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for e in container.get("env", [])}
    # The guide makes that Secret under the key KubeRay reads, and installs a KubeRay that has
    # authOptions (1.5.1 and later), the one whose CRDs the schema check was read from.
    setup = "\n".join(commands(guide_block("k8s-guide")))
    assert re.search(r"create secret generic depthlab-ray-token\s+--from-literal=auth_token=", setup)
    assert f"--version {KUBERAY_VERSION}" in setup


def test_an_impossible_run_is_refused_on_kuberay_and_a_paper_run_fits(monkeypatch):
    from orchestrator import launcher
    from orchestrator.capacity import capacity_problem
    from orchestrator.spec import ClusterSpec, load_spec

    calls = []

    def read(name, namespace):  # the Kubernetes API read is the one part that needs a cluster
        calls.append((name, namespace))
        return autoscaler_view()

    monkeypatch.setattr(launcher, "kuberay_autoscaling_config", read)
    monkeypatch.setenv("RAY_CLUSTER_NAME", "depthlab")
    monkeypatch.setenv("RAY_CLUSTER_NAMESPACE", "depthlab")
    monkeypatch.delenv("DEPTHLAB_AUTOSCALER_CONFIG", raising=False)
    ceiling = launcher.cluster_ceiling()
    assert calls == [("depthlab", "depthlab")] and ceiling["GPU"] == 32
    too_big = ClusterSpec(workers_per_run=40, cpus_per_worker=8, use_gpu=True)
    level, why = capacity_problem(too_big, now={"CPU": 0}, ceiling=ceiling)
    assert level == "error" and "40 GPU (the cluster can grow to at most 32)" in why
    table2 = load_spec(REPO / "configs" / "imagenet_table2.yaml").cluster
    assert capacity_problem(table2, now={}, ceiling=ceiling)[0] == "warning"  # waits, then fits


def test_gpu_pods_fit_the_node_type_they_ask_for_and_match_it_from_zero():
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    (group,) = raycluster()["spec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    # GPU feature discovery labels a node only after it boots: nothing matches from zero.
    assert not any(k.startswith("nvidia.com/") for k in pod["nodeSelector"])
    instance_type = pod["nodeSelector"]["node.kubernetes.io/instance-type"]
    spec = INSTANCE_TYPES[instance_type]
    requests = pod["containers"][0]["resources"]["requests"]
    assert int(requests["nvidia.com/gpu"]) == spec["GpuInfo"]["Gpus"][0]["Count"]
    # The kubelet and the daemon sets keep a few CPUs and a few GiB of every node.
    assert float(requests["cpu"]) <= spec["VCpuInfo"]["DefaultVCpus"] - 2
    assert int(requests["memory"].removesuffix("Gi")) * 1024 <= spec["MemoryInfo"]["SizeInMiB"] * 0.9
    shm = pod["volumes"][0]["emptyDir"]["sizeLimit"]
    assert int(shm.removesuffix("Gi")) < int(requests["memory"].removesuffix("Gi"))


def test_the_guide_creates_the_namespace_before_anything_in_it_and_names_every_placeholder():
    steps = commands(guide_block("k8s-guide"))
    first_in_namespace = min(i for i, c in enumerate(steps)
                             if "-n depthlab" in c or "apply -f infra/k8s" in c)
    assert "create namespace depthlab" in steps[first_in_namespace - 1] or any(
        "create namespace depthlab" in c for c in steps[:first_in_namespace])
    placeholders = set()
    for path in list(K8S.glob("*.yaml")) + [REPO / "Dockerfile"]:
        placeholders |= set(re.findall(r"YOUR-[A-Z-]+[A-Z]", path.read_text()))
    table = GUIDE.read_text().split("<!-- placeholders -->", 1)[1].split("\n\n", 1)[0]
    assert placeholders and all(f"`{p}`" in table for p in placeholders), placeholders
    # Every Secret a manifest reads is created by the guide before the manifest is applied.
    applied = {c.split("apply -f ", 1)[1].split()[0]: i for i, c in enumerate(steps) if "apply -f" in c}
    for name, docs in manifests().items():
        wanted = set(re.findall(r"name: (depthlab-[a-z-]+)}?, key", (K8S / name).read_text()))
        wanted |= {d["spec"]["authOptions"]["secretName"] for d in docs
                   if d.get("kind") == "RayCluster"}
        for secret in wanted:
            made = [i for i, c in enumerate(steps) if f"create secret generic {secret} " in c + " "]
            assert made and made[0] < applied[f"infra/k8s/{name}"], (name, secret)


def test_the_rayjob_trains_on_the_data_the_guide_builds():
    job = yaml.safe_load((K8S / "rayjob.yaml").read_text())
    entry = job["spec"]["entrypoint"]
    config = re.search(r"--config (\S+)", entry).group(1)
    data_url = re.search(r"train\.data_url=(\S+)", entry).group(1)
    built = [c for c in commands(guide_block("data-guide")) if "build_shards.py" in c]
    assert built and all(data_url in c for c in built)
    spec = yaml.safe_load((REPO / config).read_text())
    assert spec["data_name"] in data_url  # imagenet config on imagenet shards
