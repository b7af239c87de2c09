"""The main job: train plain, residual and pre-activation networks at several depths, compare.

    python pipelines/compare_depths.py [--config configs/demo.yaml] [--set key=value ...]
                                       [--sweep-id ID] [--dry-run] [--fail-fast]
    ray job submit --working-dir . -- python pipelines/compare_depths.py

Services come from MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL (+ AWS credentials) and RAY_ADDRESS;
unset ones default to the embedded local stack (`make up`). Re-running with the same
--sweep-id skips finished runs and resumes unfinished ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from orchestrator.endpoints import apply_local_stack_defaults  # noqa: E402
from orchestrator.spec import SpecError, load_spec  # noqa: E402
from training.data.storage import StorageError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "demo.yaml"),
                   help="experiment spec (YAML); default: the demo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set train.epochs=2 --set grid.depth=[8,14]")
    p.add_argument("--sweep-id", help="resume this sweep (default: a new id from the time)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and check the data and services; train nothing")
    p.add_argument("--fail-fast", action="store_true", help="stop launching runs after a failure")
    return p.parse_args(argv)


def _interrupt(signum, frame):
    # `ray job stop` sends SIGTERM: stop as on Ctrl-C, leaving the record marked, not running.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_local_stack_defaults()
    from orchestrator.sweep import check_services, new_sweep_id, plan_rows, print_plan, run_sweep

    signal.signal(signal.SIGTERM, _interrupt)
    sweep_id = args.sweep_id or new_sweep_id()
    try:
        spec = load_spec(args.config, args.overrides)
        plan = plan_rows(spec)
        print_plan(spec, sweep_id, plan)
        problems = check_services(spec)
        for problem in problems:
            print(f"  problem: {problem}", file=sys.stderr)
        if args.dry_run:
            print("dry run: services " + ("NOT ready" if problems else "reachable, data present"))
            return 1 if problems else 0
        if problems:
            return 2
        return run_sweep(spec, sweep_id, fail_fast=args.fail_fast, plan=plan)
    except SpecError as exc:
        print(f"compare_depths: bad config: {exc}", file=sys.stderr)
        return 2
    except (StorageError, RuntimeError) as exc:
        print(f"compare_depths: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        why = str(exc) or "SIGINT"
        print(f"compare_depths: stopped by {why}; the sweep's MLflow record, if it began, is marked KILLED. "
              f"Resubmit with --sweep-id {sweep_id} to go on: finished runs are kept, "
              "unfinished ones resume from their last checkpoint", file=sys.stderr, flush=True)
        # Not a normal exit: that would join the threads still blocked in Ray Train until
        # their runs end. The record is written; Ray stops the runs this driver owned.
        sys.stdout.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
