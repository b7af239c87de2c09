"""The embedded local stack: an S3 server, an MLflow tracking server and a Ray head node.

    python infra/local/stack.py up|down|status|env [--state-dir DIR] [--ports default|auto]
    python infra/local/stack.py submit -- python pipelines/compare_depths.py ...

Everything listens on 127.0.0.1 (except Ray's GCS and raylet, which listen on every interface
whatever they are told; Ray's token authentication, left on, guards them). State, logs and pids
live under one git-ignored folder (``.depthlab/`` by default). ``down`` stops only the processes
``up`` started, found by process id and process tree, never with ``ray stop``.

The S3 server (moto) keeps objects in memory, so ``up`` re-creates the bucket and the demo
shards whenever it (re)starts the S3 server. MLflow's run records live in SQLite under the state
folder; their artifacts live in the bucket and do not survive an S3 server restart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from infra.local.services import (  # noqa: E402
    bin_path,
    http_ok,
    mlflow_server_command,
    start_moto,
    wait_for,
)
from infra.local.services import (
    start_mlflow as start_mlflow_server,
)
from orchestrator import endpoints  # noqa: E402
from orchestrator.demo_data import DATASETS  # noqa: E402

BUCKET = "depthlab"
# moto accepts any credentials; these are not secrets.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "depthlab-local", "AWS_SECRET_ACCESS_KEY": "depthlab-local-secret",
                     "AWS_DEFAULT_REGION": "us-east-1"}
# `make up` uses these so that `ray job submit` finds the dashboard at Ray's default address.
DEFAULT_PORTS = {"s3": 9400, "mlflow": 5050, "ray_gcs": 6390, "ray_dashboard": 8265,
                 "ray_client": 6391, "agent_listen": 6392, "agent_grpc": 6393,
                 "runtime_env_agent": 6394, "metrics": 6395, "node_manager": 6396,
                 "object_manager": 6397, "min_worker": 27000, "max_worker": 27199}
WORKER_PORTS = 200
MLFLOW_ADMIN = "depthlab"


def state_dir_from(arg: str | None) -> Path:
    return (Path(arg) if arg else endpoints.state_dir()).resolve()


def load_state(folder: Path) -> dict:
    # The same reader the clients use to find the stack (orchestrator.endpoints).
    return endpoints.read_stack_state(folder) or {}


def save_state(folder: Path, state: dict) -> None:
    tmp = folder / (endpoints.STATE_FILE + ".tmp")
    tmp.touch(mode=0o600)  # it may hold the MLflow password of --mlflow-auth: this user's only
    tmp.chmod(0o600)
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(folder / endpoints.STATE_FILE)


# ---------------------------------------------------------------------------- ports and health

def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def auto_ports() -> dict:
    """Free ports for every service, and a free block for Ray's workers (tests use this)."""
    ports, taken = {}, set()
    for name in DEFAULT_PORTS:
        if name in ("min_worker", "max_worker"):
            continue
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            # Stay outside Ray's default worker range, which Ray refuses for its own ports.
            if port not in taken and not 10002 <= port <= 19999:
                break
        ports[name] = port
        taken.add(port)
    for _ in range(200):
        base = random.randrange(20000, 32000 - WORKER_PORTS)
        block = range(base, base + WORKER_PORTS)
        if not taken.intersection(block) and all(port_free(p) for p in block[::10]):
            ports["min_worker"], ports["max_worker"] = base, base + WORKER_PORTS - 1
            return ports
    raise RuntimeError("no free block of ports for Ray's workers")


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------- processes

def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and every process under them, alive ones only."""
    found: list[int] = []
    for pid in roots:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            continue
        found += [p.pid for p in procs if p.pid not in found and pid_alive(p.pid)]
    return found


def ray_processes(temp_dir: str, gcs_port: int) -> list[int]:
    """The Ray processes of our head: those naming our temp dir, and everything under them.

    Agents and idle workers no longer name the temp dir on their command line, so the whole
    tree under the GCS and the raylet is collected before anything is killed. The Ray client
    server names neither and is nobody's child: it is known by the GCS address it serves.
    """
    me = os.getpid()

    def ours(cmd: str) -> bool:
        return temp_dir in cmd or ("ray.util.client.server" in cmd
                                   and f":{gcs_port} " in cmd.replace(",", " ") + " ")

    roots = [p.pid for p in psutil.process_iter(["cmdline"])
             if p.pid != me and ours(" ".join(p.info["cmdline"] or []))]
    return process_tree(roots)


def terminate(pids: list[int], grace: float = 8.0) -> None:
    """SIGTERM, then SIGKILL for what is still alive after ``grace`` seconds."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def stop_group(pid: int | None) -> None:
    if not pid_alive(pid):
        return
    terminate(process_tree([pid]))


# ---------------------------------------------------------------------------- the services

def service_env(state: dict) -> dict:
    """The standard variables that point every client at this stack. With --mlflow-auth they
    include MLflow's credentials: the head node's environment hands them to job drivers and
    workers (never a job's runtime_env, which the dashboard shows)."""
    u = urls(state)
    env = {"AWS_ENDPOINT_URL": u["s3"], **LOCAL_CREDENTIALS, "MLFLOW_TRACKING_URI": u["mlflow"],
           "RAY_ADDRESS": u["ray_gcs"], "RAY_API_SERVER_ADDRESS": u["ray_dashboard"],
           "RAY_AUTH_MODE": "token"}
    if state.get("mlflow_auth"):
        env.update(MLFLOW_TRACKING_USERNAME=MLFLOW_ADMIN,
                   MLFLOW_TRACKING_PASSWORD=state["mlflow_password"])
    return env


def urls(state: dict) -> dict:
    ports = state["ports"]
    return {
        "s3": f"http://127.0.0.1:{ports['s3']}",
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
        "ray_dashboard": f"http://127.0.0.1:{ports['ray_dashboard']}",
        "ray_gcs": f"127.0.0.1:{ports['ray_gcs']}",
    }


def s3_healthy(state: dict) -> bool:
    return pid_alive(state.get("pids", {}).get("s3")) and http_ok(urls(state)["s3"] + "/moto-api/")


def mlflow_healthy(state: dict) -> bool:
    return pid_alive(state.get("pids", {}).get("mlflow")) and http_ok(urls(state)["mlflow"] + "/health")


def ray_healthy(state: dict) -> bool:
    return bool(ray_processes(state.get("ray_temp_dir", "\0"), state["ports"]["ray_gcs"])) and http_ok(
        urls(state)["ray_dashboard"] + "/api/version")


def ray_nodes(state: dict) -> list[dict]:
    """The cluster's live nodes, from the dashboard's state API (token-authenticated)."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    req = urllib.request.Request(urls(state)["ray_dashboard"] + "/api/v0/nodes?limit=1000",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        nodes = json.load(resp)["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]


def describe_nodes(nodes: list[dict]) -> str:
    heads = sum(1 for n in nodes if n.get("is_head_node"))
    slots = sum(n.get("resources_total", {}).get("gpu_slot", 0) for n in nodes)
    text = f"{len(nodes)} node{'s' * (len(nodes) != 1)} ({heads} head, {len(nodes) - heads} worker)"
    return text + (f", {slots:g} gpu_slot" if slots else "")


def start_s3(state: dict, folder: Path, env: dict) -> None:
    state["pids"]["s3"] = start_moto(state["ports"]["s3"], folder / "logs" / "s3.log", env).pid


def seed_demo_data(state: dict, folder: Path, env: dict) -> None:
    """The bucket and the generated datasets' shards: moto forgets them on every restart, and
    a dataset made by older code (another signature) is made again."""
    os.environ.update(env)
    from orchestrator.demo_data import generate, signature
    from orchestrator.shards import build_split
    from training.data import storage

    storage.ensure_bucket(f"s3://{BUCKET}")
    for prefix, args in DATASETS.items():
        dest = f"s3://{BUCKET}/{prefix}"
        mark = storage.join(dest, "signature.txt")
        try:
            if storage.read_bytes(mark).decode() == signature(**args):
                continue
        except storage.StorageError:  # never built in this S3 server's lifetime
            pass
        print(f"  building the generated dataset {dest} ...", flush=True)
        images = generate(folder / f"{prefix}-images", **args)
        for split in ("train", "val") + (("holdout",) if args.get("holdout_per_class") else ()):
            build_split(images, dest, split, shard_size=500)
        storage.write_bytes(mark, signature(**args).encode())


def start_mlflow(state: dict, folder: Path, env: dict) -> None:
    ports = state["ports"]
    mlenv = dict(env, MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{ports['s3']}")
    cmd = mlflow_server_command(ports["mlflow"], f"sqlite:///{folder / 'mlflow.db'}",
                                "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts",
                                "--workers", "1")
    if state.get("mlflow_auth"):
        cmd += ["--app-name", "basic-auth"]
        mlenv["MLFLOW_AUTH_CONFIG_PATH"] = str(write_mlflow_auth_config(state, folder))
        # The auth app's CSRF protection signs with it; stable across restarts of the server.
        mlenv["MLFLOW_FLASK_SERVER_SECRET_KEY"] = state["mlflow_secret_key"]
    state["pids"]["mlflow"] = start_mlflow_server(cmd, ports["mlflow"],
                                                  folder / "logs" / "mlflow.log", mlenv).pid


def write_mlflow_auth_config(state: dict, folder: Path) -> Path:
    """The basic-auth app's config: users in SQLite beside the run store, an admin whose
    password was drawn at random when the stack was first started with --mlflow-auth."""
    path = folder / "mlflow-auth.ini"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'mlflow-auth.db'}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        f"admin_password = {state['mlflow_password']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def start_ray(state: dict, folder: Path, env: dict) -> None:
    p = state["ports"]
    cmd = [bin_path("ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
           "--port", str(p["ray_gcs"]), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(p["ray_dashboard"]), "--ray-client-server-port", str(p["ray_client"]),
           "--dashboard-agent-listen-port", str(p["agent_listen"]),
           "--dashboard-agent-grpc-port", str(p["agent_grpc"]),
           "--runtime-env-agent-port", str(p["runtime_env_agent"]),
           "--metrics-export-port", str(p["metrics"]), "--node-manager-port", str(p["node_manager"]),
           "--object-manager-port", str(p["object_manager"]),
           "--min-worker-port", str(p["min_worker"]), "--max-worker-port", str(p["max_worker"]),
           "--temp-dir", state["ray_temp_dir"], "--num-cpus", str(state["num_cpus"]),
           "--object-store-memory", str(512 * 1024 * 1024), "--disable-usage-stats"]
    extra_env = {}
    if state.get("autoscale"):
        cmd += ["--autoscaling-config", str(write_autoscaler_config(state, folder))]
        # The fake_multinode provider refuses to run without this; nodes it adds are raylets
        # on this machine, children of the head's autoscaler (so `down` finds them too).
        extra_env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "2",
                     # Where job drivers find the node types (orchestrator.launcher).
                     "DEPTHLAB_AUTOSCALER_CONFIG": str(folder / "autoscaler.yaml")}
    # The head's environment reaches every job driver and worker: endpoints and the local
    # (non-secret) credentials, so Ray Train can write checkpoints to the local S3 server.
    # Token authentication stays on: a token is made once (in Ray's default place,
    # ~/.ray/auth_token, where every client looks) and the head starts with RAY_AUTH_MODE=token.
    ensure_ray_token()
    # The venv's bin first on PATH: a job's `python` entrypoint is then the project's Python.
    renv = dict(env, **extra_env, RAY_AUTH_MODE="token", PYTHONPATH=str(REPO_ROOT),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    log = folder / "logs" / "ray-start.log"
    with open(log, "ab") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=renv, cwd=REPO_ROOT,
                            timeout=180).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"ray start failed (exit {rc}):\n{tail}")
    wait_for(lambda: ray_healthy(state), "Ray dashboard", 90)


def write_autoscaler_config(state: dict, folder: Path) -> Path:
    """infra/local/fake_autoscaler.yaml with this stack's GCS address and head CPUs filled in."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "infra" / "local" / "fake_autoscaler.yaml").read_text())
    config["provider"]["gcs_address"] = urls(state)["ray_gcs"]
    config["available_node_types"]["ray.head.default"]["resources"] = {"CPU": state["num_cpus"]}
    path = folder / "autoscaler.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ensure_ray_token() -> None:
    token = Path.home() / ".ray" / "auth_token"
    if not token.exists():
        # The command prints the token: keep it out of every log.
        subprocess.run([bin_path("ray"), "get-auth-token", "--generate"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    token.chmod(0o600)  # Ray writes it world-readable; only this user needs it


def up(folder: Path, ports: str, num_cpus: int | None, autoscale: bool = False,
       mlflow_auth: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    state = load_state(folder)
    if state.get("ports") and ray_healthy(state) and bool(state.get("autoscale")) != autoscale:
        raise RuntimeError("the running Ray head was started " +
                           ("with" if state.get("autoscale") else "without") +
                           " the autoscaler: `make down` first, then start it the way you want")
    if state.get("ports") and mlflow_healthy(state) and bool(state.get("mlflow_auth")) != mlflow_auth:
        raise RuntimeError("the running MLflow server was started " +
                           ("with" if state.get("mlflow_auth") else "without") +
                           " basic authentication: `make down` first, then start it the way you want")
    if not state.get("ports"):
        state["ports"] = auto_ports() if ports == "auto" else dict(DEFAULT_PORTS)
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
        # Short: Ray's unix socket paths must stay under 108 characters.
        state["ray_temp_dir"] = f"/tmp/dlray-{digest}"
        state["num_cpus"] = num_cpus or os.cpu_count() or 2
        state["pids"] = {}
    state["autoscale"] = autoscale
    state["mlflow_auth"] = mlflow_auth
    if mlflow_auth and not state.get("mlflow_password"):
        state["mlflow_password"] = secrets.token_urlsafe(18)
        state["mlflow_secret_key"] = secrets.token_urlsafe(32)
    env = dict(os.environ, **service_env(state))
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not try to join another cluster
    save_state(folder, state)

    if not s3_healthy(state):
        stop_group(state["pids"].get("s3"))
        print(f"  starting S3 server on {urls(state)['s3']}", flush=True)
        start_s3(state, folder, env)
        save_state(folder, state)
    seed_demo_data(state, folder, env)
    if not mlflow_healthy(state):
        stop_group(state["pids"].get("mlflow"))
        print(f"  starting MLflow server on {urls(state)['mlflow']}", flush=True)
        start_mlflow(state, folder, env)
        save_state(folder, state)
    if not ray_healthy(state):
        terminate(ray_processes(state["ray_temp_dir"], state["ports"]["ray_gcs"]))
        print(f"  starting Ray head (dashboard {urls(state)['ray_dashboard']})", flush=True)
        start_ray(state, folder, env)
    state["env"] = service_env(state)
    if autoscale:  # drivers started outside `ray job submit` find the node types here
        state["env"]["DEPTHLAB_AUTOSCALER_CONFIG"] = str(folder / "autoscaler.yaml")
    state["urls"] = urls(state)
    save_state(folder, state)
    return state


def down(folder: Path) -> None:
    state = load_state(folder)
    if not state:
        print("  nothing to stop")
        return
    temp_dir = state.get("ray_temp_dir")
    if temp_dir:
        terminate(ray_processes(temp_dir, state["ports"]["ray_gcs"]))
    for name in ("mlflow", "s3"):
        stop_group(state.get("pids", {}).get(name))
    state["pids"] = {}
    state.pop("env", None)  # clients must no longer be pointed at stopped services
    save_state(folder, state)
    print("  stopped")


def status(folder: Path) -> bool:
    state = load_state(folder)
    if not state.get("ports"):
        print("local stack: not started (make up)")
        return False
    checks = {"s3": s3_healthy(state), "mlflow": mlflow_healthy(state),
              "ray_dashboard": ray_healthy(state)}
    names = {"s3": "S3 server (moto)", "mlflow": "MLflow UI", "ray_dashboard": "Ray dashboard"}
    for key, ok in checks.items():
        print(f"  {names[key]:<18} {urls(state)[key]:<28} {'up' if ok else 'DOWN'}")
    cluster = "DOWN"
    if checks["ray_dashboard"]:
        try:
            cluster = "up: " + describe_nodes(ray_nodes(state))
        except (OSError, KeyError, ValueError) as exc:
            cluster = f"up (nodes unknown: {exc})"
        if state.get("autoscale"):
            cluster += ", fake_multinode autoscaler"
    print(f"  {'Ray cluster':<18} {urls(state)['ray_gcs']:<28} {cluster}")
    print(f"  {'generated data':<18} s3://{BUCKET}/{{{','.join(DATASETS)}}}")
    print(f"  {'state and logs':<18} {folder}")
    return all(checks.values())


def submit(folder: Path, entrypoint: list[str]) -> int:
    state = load_state(folder)
    if not state.get("env"):
        print("the local stack is not running: make up", file=sys.stderr)
        return 2
    env = dict(os.environ, **{k: v for k, v in state["env"].items() if k not in os.environ})
    cmd = [bin_path("ray"), "job", "submit", "--address", state["env"]["RAY_API_SERVER_ADDRESS"],
           "--working-dir", str(REPO_ROOT), "--", *entrypoint]
    return subprocess.call(cmd, env=env, cwd=REPO_ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("up", "down", "status", "env", "submit"))
    p.add_argument("--state-dir", help="state folder (default .depthlab/ in the repository)")
    p.add_argument("--ports", choices=("default", "auto"), default="default",
                   help="default: fixed ports (dashboard on 8265); auto: free ports (tests)")
    p.add_argument("--num-cpus", type=int, help="CPUs the Ray head advertises")
    p.add_argument("--autoscale", action="store_true",
                   help="start the Ray head with the fake_multinode autoscaler "
                        "(infra/local/fake_autoscaler.yaml): GPU-like worker nodes come and go")
    p.add_argument("--mlflow-auth", action="store_true",
                   help="run MLflow with basic authentication (a random admin password; "
                        "`stack.py env` prints the MLFLOW_TRACKING_* variables)")
    argv = list(sys.argv[1:] if argv is None else argv)
    # With submit, everything after "--" is the job's entrypoint, untouched by argparse.
    entrypoint = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    folder = state_dir_from(args.state_dir)
    try:
        if args.command == "up":
            print("local stack: starting")
            up(folder, args.ports, args.num_cpus, args.autoscale, args.mlflow_auth)
            status(folder)
            return 0
        if args.command == "down":
            down(folder)
            return 0
        if args.command == "status":
            return 0 if status(folder) else 1
        if args.command == "env":
            for k, v in load_state(folder).get("env", {}).items():
                print(f"export {k}={v}")
            return 0
        if not entrypoint:
            p.error("submit needs an entrypoint after --")
        return submit(folder, entrypoint)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"local stack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
