"""The cluster definitions parse and follow the rules a cluster relies on; the Dockerfile builds
under the classic builder and BuildKit alike (checked statically: no container engine here).

Rehearsals against running code live beside this file: test_cluster_aws.py (Ray's bootstrap and
node provider on moto's EC2/IAM), test_cluster_k8s.py (object models, KubeRay's reader),
test_cluster_mlflow.py (the servers' own commands)."""

import configparser
import fnmatch
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_aws_cluster_config_passes_rays_own_schema_and_describes_its_instances():
    from moto.ec2.models.instance_types import INSTANCE_TYPES
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "infra" / "aws" / "cluster.yaml").read_text())
    validate_config(config)  # raises on any violation of ray-schema.json
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no training on the head
    gpu = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu.values())
    assert any(t["node_config"].get("InstanceMarketOptions") for t in gpu.values())  # spot
    assert any(not t["node_config"].get("InstanceMarketOptions") for t in gpu.values())
    # The declared resources are what the capacity check reads: they must be the machine's.
    for name, node_type in gpu.items():
        spec = INSTANCE_TYPES[node_type["node_config"]["InstanceType"]]
        assert node_type["resources"]["CPU"] == spec["VCpuInfo"]["DefaultVCpus"], name
        assert node_type["resources"]["GPU"] == spec["GpuInfo"]["Gpus"][0]["Count"], name


def test_the_cluster_mlflow_server_uses_postgres_s3_and_basic_auth():
    unit = (REPO / "infra" / "mlflow" / "mlflow.service").read_text()
    exec_start = unit.split("ExecStart=", 1)[1].split("\nRestart", 1)[0]
    assert "--app-name basic-auth" in exec_start and "--artifacts-destination" in exec_start
    env = dict(line.split("=", 1) for line in
               (REPO / "infra" / "mlflow" / "mlflow.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {"PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
            "MLFLOW_SERVER_ALLOWED_HOSTS"} <= set(env)
    docs = list(yaml.safe_load_all((REPO / "infra" / "k8s" / "mlflow.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service"}
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "postgresql+psycopg://" in " ".join(command)
    # The Service's names, as the Ray pods (raycluster.yaml) address the server.
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    cluster = yaml.safe_load((REPO / "infra" / "k8s" / "raycluster.yaml").read_text())
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        names = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert names["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        host = urlsplit(names["MLFLOW_TRACKING_URI"]["value"]).netloc
        assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), host
    secret_env = [e for e in container["env"] if "PASSWORD" in e["name"] or "SECRET" in e["name"]]
    assert len(secret_env) == 3 and all("valueFrom" in e for e in secret_env)  # from Secrets
    # The auth config, as MLflow's own reader sees it: no password in it, Postgres for users.
    for text in ((REPO / "infra" / "mlflow" / "basic_auth.ini").read_text(),
                 kinds["ConfigMap"]["data"]["basic_auth.ini"]):
        ini = configparser.ConfigParser()
        ini.read_string(text)
        assert ini["mlflow"]["database_uri"].startswith("postgresql+psycopg://")
        assert "admin_password" not in ini["mlflow"]
        assert urlsplit(ini["mlflow"]["database_uri"]).password is None


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    return [tuple(line.split(None, 1)) for line in logical.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_builds_alike_under_both_builders():
    text = (REPO / "Dockerfile").read_text()
    # BuildKit-only syntax: a parser directive, RUN --mount/--network, COPY --link/--parents,
    # heredocs. The classic builder fails on each.
    assert not re.search(r"^# *syntax=|--mount=|--network=|--link\b|--parents\b|<<[A-Z-]*EOF",
                         text, re.M)
    steps = dockerfile_instructions()
    assert steps[0][0] == "FROM"
    (workdir,) = [arg for op, arg in steps if op == "WORKDIR"]
    index = [op for op, _ in steps].index("WORKDIR")
    # WORKDIR makes its folder root's under the classic builder; the image runs as `ray` and
    # pip builds in it, so a step before WORKDIR must have made it and handed it to `ray`.
    assert any(op == "RUN" and f"mkdir -p {workdir}" in arg and f"chown ray:users {workdir}" in arg
               for op, arg in steps[:index])


def test_the_docker_image_installs_the_project_where_the_rayjob_runs_it():
    docker = (REPO / "Dockerfile").read_text()
    job = yaml.safe_load((REPO / "infra" / "k8s" / "rayjob.yaml").read_text())
    workdir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    assert f"WORKDIR {workdir}" in docker
    for folder in ("orchestrator", "training", "pipelines", "configs"):
        assert f"COPY --chown=ray:users {folder} {folder}" in docker
    # Every path the image copies exists and is not excluded by .dockerignore.
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip()]
    for op, arg in dockerfile_instructions():
        if op != "COPY":
            continue
        sources = [a for a in arg.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/")
                           for pattern in ignored), source
