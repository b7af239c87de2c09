"""Rebuild the comparison report of a sweep from MLflow alone.

    python pipelines/report.py --sweep-id ID [--experiment NAME | --config configs/x.yaml]
                               [--out DIR] [--no-log]

Reads the sweep's child runs (metrics and params), writes ``comparison.md``,
``training_curves.png`` and ``summary.json``, logs them to the sweep's parent run under
``report/`` (unless --no-log) and prints the table and verdicts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from orchestrator.endpoints import apply_local_stack_defaults  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep-id", required=True)
    p.add_argument("--experiment", help="MLflow experiment (default: the config's)")
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "demo.yaml"))
    p.add_argument("--out", type=Path, help="also keep the report files in this folder")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = p.parse_args(argv)
    apply_local_stack_defaults()
    from orchestrator.report import publish, render_markdown
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.mlflow_record import TAG_DATA, SweepTracker

    try:
        experiment = args.experiment or load_spec(args.config).experiment
        tracker = SweepTracker(experiment, args.sweep_id, create=False)
    except (SpecError, LookupError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    parent = tracker.find_parent()
    if parent is None:
        print(f"report: error: no sweep {args.sweep_id!r} in experiment {experiment!r}", file=sys.stderr)
        return 2
    title = f"{experiment}: sweep {args.sweep_id}"
    summary, files = publish(tracker, parent.info.run_id, parent.data.tags.get(TAG_DATA, ""),
                             title, out=args.out, log=not args.no_log)
    print(render_markdown(summary, title))
    if args.out:
        print(f"files: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
