"""The cluster's MLflow server, started with its own arguments: infra/k8s/mlflow.yaml's command
and environment, and the systemd unit's ExecStart with its environment file, each with SQLite
in place of PostgreSQL and a loopback port. API calls addressed to the names clients use in
the cluster (or behind the VM's proxy) are answered; other names are refused."""

from __future__ import annotations

import base64
import configparser
import json
import re
import shlex
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from infra.local.services import bin_path, free_port, start_mlflow, stop

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "rehearsal-admin-pw"

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]


def sqlite_auth_config(text: str, folder: Path) -> Path:
    ini = configparser.ConfigParser()
    ini.read_string(text)
    assert ini["mlflow"]["database_uri"].startswith("postgresql+psycopg://")
    ini["mlflow"]["database_uri"] = f"sqlite:///{folder / 'auth.db'}"
    path = folder / "basic_auth.ini"
    with open(path, "w") as f:
        ini.write(f)
    return path


def local_arguments(cmd: list[str], port: int, folder: Path) -> list[str]:
    """The command as shipped, with what only exists in a cluster swapped for local things."""
    swap = {"--host": "127.0.0.1", "--port": str(port),
            "--backend-store-uri": f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination": str(folder / "artifacts")}
    out = [bin_path("mlflow") if cmd[0].endswith("mlflow") else cmd[0]]
    for i, arg in enumerate(cmd[1:], 1):
        out.append(swap.get(cmd[i - 1], arg))
    assert "postgresql" in " ".join(cmd) and "postgresql" not in " ".join(out)
    return out


def call(port: int, host: str) -> int:
    auth = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": host, "Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            json.load(r)
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def kubernetes_server(folder: Path, port: int):
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "infra/k8s/mlflow.yaml").read_text())}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    secrets = {"pg-password": "unused", "admin-password": ADMIN_PASSWORD,
               "flask-secret-key": "rehearsal-secret"}
    env = {}
    for e in container["env"]:
        env[e["name"]] = e["value"] if "value" in e else secrets[e["valueFrom"]["secretKeyRef"]["key"]]
    mount = container["volumeMounts"][0]["mountPath"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == f"{mount}/basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(sqlite_auth_config(
        docs["ConfigMap"]["data"]["basic_auth.ini"], folder))
    cmd = local_arguments(container["command"], port, folder)
    import os

    return start_mlflow(cmd, port, folder / "mlflow.log", dict(os.environ, **env), timeout=300)


def systemd_server(folder: Path, port: int, public_name: str):
    unit = (REPO / "infra/mlflow/mlflow.service").read_text()
    exec_start = unit.split("ExecStart=", 1)[1].split("\nRestart", 1)[0].replace("\\\n", " ")
    env = dict(line.split("=", 1) for line in
               (REPO / "infra/mlflow/mlflow.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    env.update(re.findall(r"^Environment=(\w+)=(.*)$", unit, re.M))
    env = {k: v.replace("YOUR-MLFLOW-HOST", public_name) for k, v in env.items()}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(sqlite_auth_config(
        (REPO / "infra/mlflow/basic_auth.ini").read_text(), folder))
    words = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in shlex.split(exec_start)]
    cmd = local_arguments(words, port, folder)
    import os

    return start_mlflow(cmd, port, folder / "mlflow.log", dict(os.environ, **env), timeout=300)


def test_the_kubernetes_and_vm_servers_answer_their_clients_by_name(tmp_path):
    (tmp_path / "k8s").mkdir()
    (tmp_path / "vm").mkdir()
    k8s_port, vm_port = free_port(), free_port()
    k8s = kubernetes_server(tmp_path / "k8s", k8s_port)
    try:
        vm = systemd_server(tmp_path / "vm", vm_port, "mlflow.example.org")
        try:
            # The address raycluster.yaml gives the Ray pods, its short forms, port-forward's.
            for host in ("mlflow.depthlab.svc:5000", "mlflow:5000",
                         "mlflow.depthlab.svc.cluster.local:5000", "localhost:5000"):
                assert call(k8s_port, host) == 200, host
            assert call(k8s_port, "attacker.example.com:5000") == 403  # the protection stays on
            assert call(vm_port, "mlflow.example.org") == 200
            assert call(vm_port, "attacker.example.com") == 403
        finally:
            stop(vm)
    finally:
        stop(k8s)


def test_the_server_image_and_the_vm_install_carry_a_postgresql_driver():
    import tomllib

    server = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["server"]
    (driver,) = [dep.split("[")[0].split(">")[0] for dep in server if dep.startswith("psycopg")]
    assert 'pip install --no-cache-dir ".[server]"' in (REPO / "Dockerfile").read_text()
    install = next(line for line in (REPO / "infra/mlflow/mlflow.service").read_text().splitlines()
                   if "/opt/mlflow/bin/pip install" in line)
    assert f'"{driver}[' in install and "mlflow[auth]" in install
    # Every database URI the servers are given loads that driver in SQLAlchemy (which, from
    # 2.1 on, takes a bare postgresql:// to mean psycopg 3, and before that psycopg2).
    import sqlalchemy

    uris = set(re.findall(r"postgresql[+a-z0-9]*://[^\s\"',]+", "\n".join(
        (REPO / f).read_text() for f in ("infra/k8s/mlflow.yaml", "infra/mlflow/basic_auth.ini",
                                         "infra/mlflow/mlflow.env.example"))))
    assert len(uris) >= 2
    for uri in uris:
        engine = sqlalchemy.create_engine(uri.replace("YOUR-DB-HOST", "db.invalid"))
        assert engine.dialect.driver == driver, uri
