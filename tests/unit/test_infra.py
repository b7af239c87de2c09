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


def test_the_cluster_mlflow_server_uses_postgres_s3_and_basic_auth():
    import configparser
    from urllib.parse import urlsplit

    unit = (REPO / "infra" / "mlflow" / "mlflow.service").read_text()
    exec_start = unit.split("ExecStart=", 1)[1].split("\nRestart", 1)[0]
    assert "--app-name basic-auth" in exec_start and "--artifacts-destination" in exec_start
    env = dict(line.split("=", 1) for line in
               (REPO / "infra" / "mlflow" / "mlflow.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert {"PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)
    docs = list(yaml.safe_load_all((REPO / "infra" / "k8s" / "mlflow.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service"}
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][container["command"].index("--app-name") + 1] == "basic-auth"
    assert "postgresql://" in " ".join(container["command"])
    secret_env = [e for e in container["env"] if "PASSWORD" in e["name"] or "SECRET" in e["name"]]
    assert len(secret_env) == 3 and all("valueFrom" in e for e in secret_env)  # from Secrets
    # The auth config, as MLflow's own reader sees it: no password in it, Postgres for users.
    for text in ((REPO / "infra" / "mlflow" / "basic_auth.ini").read_text(),
                 kinds["ConfigMap"]["data"]["basic_auth.ini"]):
        ini = configparser.ConfigParser()
        ini.read_string(text)
        assert ini["mlflow"]["database_uri"].startswith("postgresql://")
        assert "admin_password" not in ini["mlflow"]
        assert urlsplit(ini["mlflow"]["database_uri"]).password is None
    # Ray pods log in to it from a Secret, as environment variables.
    cluster = yaml.safe_load((REPO / "infra" / "k8s" / "raycluster.yaml").read_text())
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        names = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert names["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert names["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.depthlab.svc")


def test_the_docker_image_installs_the_project_where_the_rayjob_runs_it():
    docker = (REPO / "Dockerfile").read_text()
    assert docker.startswith("#") and "FROM rayproject/ray:" in docker
    job = yaml.safe_load((REPO / "infra" / "k8s" / "rayjob.yaml").read_text())
    workdir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    assert f"WORKDIR {workdir}" in docker
    for folder in ("orchestrator", "training", "pipelines", "configs"):
        assert f"COPY --chown=ray:users {folder} {folder}" in docker
