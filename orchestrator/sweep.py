"""A sweep from spec to report: plan the runs, launch them on Ray, record them in MLflow."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone

from orchestrator import capacity
from orchestrator.report import publish, render_markdown
from orchestrator.ledger import price_per_device_hour, run_charge
from orchestrator.mlflow_record import TAG_RUN_KEY
from orchestrator.spec import SpecError, SweepSpec, net_key
from orchestrator.tuning import choose_lr, render_tuning, tuning_errors
from training.data import storage
from training.config import config_changes
from training.models import build_model, model_summary


def new_sweep_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def plan_rows(spec: SweepSpec) -> list[dict]:
    """One row per run: what it trains and its size (parameters, multiply-adds per image).
    A net is built once however many seeds run it."""
    rows, sizes = [], {}
    for cfg in spec.runs():
        key = (cfg.arch, cfg.depth, cfg.family, cfg.num_classes, cfg.image_size,
               tuple(sorted(cfg.model_options().items())))
        if key not in sizes:
            model = build_model(cfg.arch, cfg.depth, dataset=cfg.family,
                                num_classes=cfg.num_classes, **cfg.model_options())
            sizes[key] = model_summary(model, cfg.image_size)
        size = sizes[key]
        rows.append({"run": cfg.run_name, "arch": cfg.arch, "depth": cfg.depth, "seed": cfg.seed,
                     "shortcut": cfg.resolved_shortcut(), "params": size["params"],
                     "macs": size["macs"], "image_size": cfg.image_size,
                     "workers": cfg.world_size, "global_batch": cfg.global_batch_size,
                     "epochs": cfg.epochs, "max_steps": cfg.max_steps})
    return rows


# Effective training rate of one accelerator for the dry run's estimate: an A100-class GPU in
# bf16 (where the figure comes from: docs/configuration.md).
DEFAULT_TFLOPS = 60.0


def estimate_hours(row: dict, train_samples: int, tflops: float) -> float:
    """Device-hours of one run: the images it trains on times 6 FLOPs per multiply-add (forward
    and backward), at ``tflops`` per device."""
    steps = row["max_steps"] or row["epochs"] * (train_samples // row["global_batch"])
    return steps * row["global_batch"] * 6 * row["macs"] / (tflops * 1e12) / 3600


def train_samples(spec: SweepSpec) -> int | None:
    from training.data import read_manifest

    try:
        return read_manifest(spec.runs()[0].data_url, "train").num_samples
    except (storage.StorageError, OSError, ValueError):
        return None


def dataset_record(spec: SweepSpec) -> dict:
    """Name and digest of the training data (its manifest's hash: the manifest holds every
    shard's SHA-256, so the digest changes with any byte of the data), for the runs' input."""
    import hashlib

    url = spec.runs()[0].data_url
    manifest = storage.read_bytes(storage.join(url, "train", "manifest.json"))
    return {"name": spec.data_name or url.rstrip("/").rsplit("/", 1)[-1],
            "digest": hashlib.sha256(manifest).hexdigest()[:16]}


def print_plan(spec: SweepSpec, sweep_id: str, rows: list[dict],
               tflops: float = DEFAULT_TFLOPS) -> None:
    print(f"sweep {sweep_id}: experiment {spec.experiment!r}, {len(spec.runs())} runs, "
          f"{spec.cluster.workers_per_run} workers each, at most "
          f"{spec.cluster.max_concurrent_runs} at once")
    if spec.tune:
        tune = spec.tune_runs()
        nets = len({net_key(c) for c in tune})
        print(f"  first a tune stage: {len(tune)} runs ({nets} nets x {len(spec.tune.lr)} learning "
              f"rates x {len(spec.tune.seeds)} seeds, scored on {spec.tune.split!r}, "
              f"{tune[0].epochs} epochs each); the grid then runs at each net's best rate")
    samples = train_samples(spec)
    width = max([18] + [len(r["run"]) + 2 for r in rows])
    print(f"  {'run':<{width}}{'shortcut':>9}{'params':>12}{'MACs/img':>12}{'img':>5}"
          f"{'length':>12}{'device-h':>10}")
    total = 0.0
    for r in rows:
        hours = estimate_hours(r, samples, tflops) if samples else None
        total += hours or 0.0
        length = f"{r['max_steps']:,} it" if r["max_steps"] else f"{r['epochs']} ep"
        print(f"  {r['run']:<{width}}{r['shortcut']:>9}{r['params']:>12,}{r['macs'] / 1e6:>11.1f}M"
              f"{r['image_size']:>5}{length:>12}"
              + (f"{hours:>10.2f}" if hours is not None else f"{'?':>10}"))
    if samples:
        price = price_per_device_hour(spec.cluster.cost)
        market = spec.cluster.cost.get("market", "on_demand")
        cost = f", about ${total * price:,.0f} at {market} prices" if price is not None else ""
        print(f"  estimated {total:.1f} device-hours in all{cost} ({samples:,} training images, "
              f"{tflops:.0f} TFLOP/s effective per device: an A100-class GPU in bf16; tune "
              "runs not included)")


def placeholder_problems(spec: SweepSpec) -> list[str]:
    """Settings still holding a shipped config's placeholder (``YOUR-PREFIX``...)."""
    values = {f"train.{k}": v for k, v in spec.runs()[0].to_dict().items()}
    values["cluster.storage_path"] = spec.cluster.storage_path
    return [f"{key} is {value!r}: replace the placeholder with --set {key}=... "
            "(docs/cluster.md, Placeholders)" for key, value in values.items()
            if isinstance(value, str) and "YOUR-" in value]


def check_services(spec: SweepSpec) -> list[str]:
    """Problems that would stop the sweep, found before anything starts."""
    problems = placeholder_problems(spec)
    if problems:  # asking S3 for a placeholder's bucket would only add a confusing second line
        return problems
    data_url = spec.runs()[0].data_url
    for split in ("train", "val"):
        try:
            if not storage.exists(storage.join(data_url, split, "manifest.json")):
                problems.append(f"no {split} manifest under {data_url}: build the shards first")
        except storage.StorageError as exc:
            problems.append(str(exc))
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("http"):
        problem = mlflow_problem(uri.rstrip("/"), os.environ.get("MLFLOW_TRACKING_USERNAME"),
                                 os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        if problem:
            problems.append(problem)
    elif not uri:
        problems.append("MLFLOW_TRACKING_URI is not set and no local stack is running (make up)")
    return problems


def mlflow_problem(uri: str, user: str | None, password: str | None) -> str | None:
    """Why the tracking server at ``uri`` cannot take this sweep's runs, or None: it must
    answer, and accept the credentials (basic-auth mode) if it asks for them."""
    import base64
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri + "/health", timeout=10).read()
    except OSError as exc:
        return f"MLflow tracking server {uri} does not answer: {exc}"
    req = urllib.request.Request(uri + "/api/2.0/mlflow/experiments/search?max_results=1")
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(req, timeout=30).read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and not user:
            return (f"MLflow tracking server {uri} asks for a login: set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        if exc.code == 401:
            return (f"MLflow tracking server {uri} rejected the login of user {user!r} "
                    "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
        if exc.code == 403:
            return f"MLflow user {user!r} may not read experiments on {uri}"
        return f"MLflow tracking server {uri} answered {exc.code} {exc.reason}"
    except OSError as exc:
        return f"MLflow tracking server {uri} does not answer: {exc}"
    return None


class SweepStatus:
    """Runs done, running and queued, printed whenever that changes; and every ``every_s``
    seconds each running run's epoch and latest errors, read from its MLflow run."""

    def __init__(self, total: int, skipped: int, tracker=None, every_s: float = 30.0):
        self.total, self.done, self.failed, self.running = total, skipped, 0, {}
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.tracker, self.every_s = tracker, every_s
        self._stop = threading.Event()
        if tracker is not None:
            threading.Thread(target=self._watch, name="sweep-progress", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            with self.lock:
                running = dict(self.running)
            for name, run_id in running.items():
                try:
                    m = self.tracker.client.get_run(run_id).data.metrics
                except Exception:  # progress is best effort; MLflow may be busy
                    continue
                parts = [f"epoch {int(m['epoch'])}" if "epoch" in m else "epoch 0"]
                parts += [f"{label} {m[k]:.1f}%" for k, label in
                          (("train/error_top1", "train err"), ("val/error_top1", "val err")) if k in m]
                self.line(f"{name}: " + ", ".join(parts))

    def stop(self) -> None:
        self._stop.set()

    def line(self, event: str) -> None:
        with self.lock:
            queued = self.total - self.done - self.failed - len(self.running)
            elapsed = time.monotonic() - self.t0
            print(f"[{elapsed:6.0f}s] {self.done} done, {self.failed} failed, "
                  f"{len(self.running)} running, {queued} queued | {event}", flush=True)


def charge(tracker, cfg, spec: SweepSpec, seconds: float) -> None:
    """The ledger's entry for one submission's stretch of a run (orchestrator.ledger); a
    tracking server that refuses it costs the sweep nothing."""
    try:
        tracker.log_metrics(cfg.mlflow_run_id, run_charge(seconds, spec.cluster.devices_per_run,
                                                          spec.cluster.cost), int(time.time()))
    except Exception as exc:
        print(f"  note: could not record {cfg.run_name}'s device-hours: {exc}", flush=True)


def _train_runs(spec: SweepSpec, sweep_id: str, todo, tracker, progress: SweepStatus,
                fail_fast: bool) -> list[str]:
    """Launch the runs, at most ``max_concurrent_runs`` at once; return the failures."""
    from orchestrator import launcher

    failures: list[str] = []
    if not todo:
        return failures
    pool = ThreadPoolExecutor(max_workers=spec.cluster.max_concurrent_runs)
    pending = {}
    try:
        queue = list(todo)

        started: dict[str, float] = {}

        def launch():
            cfg = queue.pop(0)
            progress.running[cfg.run_name] = cfg.mlflow_run_id
            progress.line(f"{cfg.run_name} started")
            started[cfg.run_name] = time.monotonic()
            pending[pool.submit(launcher.run_training, cfg, spec.cluster, sweep_id)] = cfg

        while queue and len(pending) < spec.cluster.max_concurrent_runs:
            launch()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                cfg = pending.pop(fut)
                outcome = fut.result()
                progress.running.pop(cfg.run_name, None)
                charge(tracker, cfg, spec, time.monotonic() - started[cfg.run_name])
                if outcome.ok:
                    progress.done += 1
                    tracker.set_status(cfg.mlflow_run_id, "FINISHED")
                    err = outcome.metrics.get("val/error_top1")
                    progress.line(f"{cfg.run_name} finished" +
                                  (f": val error {err:.2f}%" if err is not None else ""))
                else:
                    progress.failed += 1
                    failures.append(f"{cfg.run_name}: {outcome.error}")
                    tracker.set_status(cfg.mlflow_run_id, "FAILED")
                    progress.line(f"{cfg.run_name} FAILED: {outcome.error.splitlines()[0][:200]}")
                    if fail_fast:
                        queue.clear()
            while queue and len(pending) < spec.cluster.max_concurrent_runs:
                launch()
    except BaseException:
        # Ctrl-C or `ray job stop`: leave now (run_sweep closes the record). The runs' threads
        # are blocked in Ray Train until their runs end; the caller exits the process, and Ray
        # stops the runs it owned.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return failures


def tune_stage(spec: SweepSpec, sweep_id: str, tracker, parent_id: str, sizes: dict,
               dataset: dict, fail_fast: bool) -> dict[str, float]:
    """Train the tune runs not finished yet, choose each net's learning rate from all of them,
    and record the choice on the sweep's run. Returns net -> lr."""
    todo = []
    runs = spec.tune_runs()
    by_net = {net_key(c): sizes.get(c.run_name, {}) for c in spec.runs()}
    for cfg in runs:
        size = by_net.get(net_key(cfg), {})
        child = tracker.child(parent_id, cfg, {"model_params": size.get("params", ""),
                                                "model_macs": size.get("macs", "")},
                              dataset, role="tune")
        if child.finished:
            continue
        tracker.mark_running(child.run_id)
        todo.append(cfg.replace(mlflow_run_id=child.run_id))
    print(f"tune stage: {len(runs)} runs ({len(runs) - len(todo)} finished earlier), "
          f"learning rates {', '.join(f'{lr:g}' for lr in spec.tune.lr)} chosen on "
          f"{spec.tune.split!r}", flush=True)
    progress = SweepStatus(len(runs), len(runs) - len(todo), tracker)
    try:
        failures = _train_runs(spec, sweep_id, todo, tracker, progress, fail_fast)
    finally:
        progress.stop()
    for failure in failures:
        print(f"  tune run failed: {failure}")
    errors = tuning_errors(tracker)
    chosen = choose_lr(errors)  # names a net none of whose tuning runs finished
    tracker.log_params(parent_id, {f"tune.lr.{net}": lr for net, lr in chosen.items()}
                       | {"tune.split": spec.tune.split})
    print("\n".join(render_tuning(errors, chosen, spec.tune.split)), flush=True)
    return chosen


def resubmission_changes(spec: SweepSpec, tracker) -> list[str]:
    """One line per setting that differs between this submission and the runs the sweep id
    already has (``train.lr: 0.1 -> 0.5 (residual-8-s0, ...)``): a run resumed or kept under
    other settings would not be one computation. New runs (more seeds, depths, archs,
    variants) and result-neutral settings (logging, checkpoint cadence, loader processes)
    may change."""
    existing = {r.data.tags.get(TAG_RUN_KEY): r for role in ("train", "tune")
                for r in tracker.children(role)}
    if not existing:
        return []
    import mlflow.artifacts

    changed: dict[tuple[str, str, str], list[str]] = {}
    for role, cfg in [("train", c) for c in spec.runs()] + [("tune", c) for c in spec.tune_runs()]:
        run = existing.get(cfg.run_name)
        if run is None:
            continue
        try:
            old = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config/run.json")
        except Exception:  # a run whose config cannot be read: its params tell the same
            continue
        for key, a, b in config_changes(old, cfg.to_dict()):
            if key == "lr" and role == "train" and spec.tune:  # the tune stage sets it
                continue
            changed.setdefault((key, repr(a), repr(b)), []).append(cfg.run_name)
    # Names sorted: MLflow returns runs in no fixed order, and the message should not vary.
    return [f"train.{key}: {a} -> {b} ({', '.join(sorted(runs)[:3])}"
            f"{', ...' if len(runs) > 3 else ''})"
            for (key, a, b), runs in sorted(changed.items())]


def check_cluster(spec: SweepSpec) -> None:
    """Join the cluster; refuse a sweep whose runs it could never hold, warn when they must
    wait for the autoscaler."""
    from orchestrator import launcher

    launcher.connect()
    problem = capacity.capacity_problem(spec.cluster, launcher.cluster_capacity(),
                                        launcher.cluster_ceiling())
    if problem and problem[0] == "error":
        raise launcher.ClusterError(problem[1])
    if problem:
        print(f"warning: {problem[1]}", flush=True)


def run_sweep(spec: SweepSpec, sweep_id: str, *, fail_fast: bool = False,
              plan: list[dict] | None = None) -> int:
    """Train every run of the spec that has not finished yet, then build the report.

    ``plan``: the rows of ``plan_rows(spec)`` when the caller has them already.

    Returns 0 when every run finished, 1 otherwise.
    """
    from orchestrator.mlflow_record import SweepTracker

    tracker = SweepTracker(spec.experiment, sweep_id)
    changed = resubmission_changes(spec, tracker)
    if changed:
        raise SpecError(f"sweep {sweep_id} was submitted before with other settings:\n  "
                        + "\n  ".join(changed) + "\nits runs would mix two computations: "
                        "give this submission a new --sweep-id, or set them back")
    check_cluster(spec)  # before any MLflow run exists: a refused sweep leaves no record
    parent_id = tracker.parent(spec.to_dict())
    try:
        return _run_recorded(spec, sweep_id, tracker, parent_id, fail_fast, plan)
    except BaseException as exc:
        # The driver dies (Ctrl-C, `ray job stop`, the cluster gone) wherever it was: the
        # record must not stay "running". A second signal waits until it is written.
        with signals_held():
            try:
                close_record(tracker, parent_id, killed=isinstance(exc, KeyboardInterrupt))
            except Exception as record_error:  # MLflow itself gone: say so, keep the cause
                print(f"warning: the sweep's MLflow record could not be closed: {record_error}",
                      file=sys.stderr, flush=True)
        raise


def close_record(tracker, parent_id: str, *, killed: bool) -> None:
    """Mark the sweep KILLED (or FAILED) and each of its runs still marked running KILLED:
    a resubmission with the same sweep id resumes them."""
    for role in ("tune", "train"):
        for run in tracker.children(role):
            if run.info.status == "RUNNING":
                tracker.set_status(run.info.run_id, "KILLED")
    tracker.set_status(parent_id, "KILLED" if killed else "FAILED")


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM wait (on the main thread) until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _run_recorded(spec: SweepSpec, sweep_id: str, tracker, parent_id: str, fail_fast: bool,
                  plan: list[dict] | None) -> int:
    """run_sweep's work once the sweep's MLflow run exists."""
    sizes = {row["run"]: row for row in (plan or plan_rows(spec))}
    dataset = dataset_record(spec)
    print(f"MLflow: {tracker.ui_url()} (this sweep: {tracker.ui_url(parent_id)})", flush=True)
    configs = spec.runs()
    if spec.tune:
        chosen = tune_stage(spec, sweep_id, tracker, parent_id, sizes, dataset, fail_fast)
        configs = [cfg.replace(lr=chosen[net_key(cfg)]) for cfg in configs]
    todo, skipped = [], 0
    for cfg in configs:
        size = sizes[cfg.run_name]
        child = tracker.child(parent_id, cfg, {"model_params": size["params"],
                                               "model_macs": size["macs"]}, dataset)
        if child.finished:
            skipped += 1
            print(f"  {cfg.run_name}: finished in an earlier submission, skipped")
            continue
        tracker.mark_running(child.run_id)
        todo.append(cfg.replace(mlflow_run_id=child.run_id))

    progress = SweepStatus(len(todo) + skipped, skipped, tracker)
    try:
        failures = _train_runs(spec, sweep_id, todo, tracker, progress, fail_fast)
    finally:
        progress.stop()
    title = f"{spec.experiment}: sweep {sweep_id}"
    summary, _ = publish(tracker, parent_id, spec.data_name, title,
                         tune_split=spec.tune.split if spec.tune else "",
                         target_error=spec.target_error)
    print()
    print(render_markdown(summary, title))
    print(f"report: {tracker.ui_url(parent_id)} (artifacts: report/)")
    print(f"compare the runs: {tracker.compare_url([r.info.run_id for r in tracker.children()])}")
    tracker.set_status(parent_id, "FAILED" if failures else "FINISHED")
    if failures:
        print(f"{len(failures)} run(s) failed:")
        for f in failures:
            print(f"  {f}")
        print(f"re-submit with --sweep-id {sweep_id} to retry them; finished runs are kept")
        return 1
    return 0
