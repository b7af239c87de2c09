"""What the driver pays to plan a big sweep: time and memory of expanding and sizing it.

    .venv/bin/python bench/plan_scale.py [--runs 1000]

Builds a spec of about ``--runs`` runs (every unit kind at several CIFAR depths and ImageNet
depths, many seeds), then times and measures the peak memory of what ``compare_depths.py`` does
before it launches anything: load and validate the spec (every run's config), and plan it (each
net's parameters and multiply-adds). Writes ``bench/results/plan_scale.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.spec import load_spec  # noqa: E402
from orchestrator.sweep import plan_rows  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    results = {}
    for family, archs, depths, config in (
            ("cifar", "[plain,residual,bn_after_add,relu_before_add,relu_preact,preact]",
             [20, 32, 44, 56, 110, 164, 1001], "configs/cifar10_paper.yaml"),
            ("imagenet", "[plain,residual,preact]", [18, 34, 50, 101, 152, 200],
             "configs/imagenet_deep.yaml")):
        nets = len(archs.split(",")) * len(depths)
        seeds = max(1, round(args.runs / nets))
        overrides = [f"grid.arch={archs}", f"grid.depth={depths}", f"grid.seed={list(range(seeds))}",
                     "grid.exclude=[]", "train.data_url=/nowhere", "cluster.storage_path=/nowhere"]
        tracemalloc.start()
        t = time.perf_counter()
        spec = load_spec(REPO / config, overrides)
        runs = spec.runs()
        t_spec = time.perf_counter() - t
        rows = plan_rows(spec)
        t_plan = time.perf_counter() - t - t_spec
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[family] = {"runs": len(runs), "nets": nets, "spec_s": t_spec, "plan_s": t_plan,
                           "peak_python_mb": peak / 2**20}
        assert len(rows) == len(runs)
        print(family, results[family], flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = ["# Planning a big sweep on the driver", "",
             f"`.venv/bin/python bench/plan_scale.py --runs {args.runs}`, {time.strftime('%Y-%m-%d')}; "
             f"peak resident memory of the process {rss:,.0f} MB (torch included).", "",
             "| sweep | runs | nets | load + validate | plan (sizes) | peak Python memory |",
             "|---|---|---|---|---|---|"]
    for family, r in results.items():
        lines.append(f"| {family} | {r['runs']:,} | {r['nets']} | {r['spec_s']:.1f} s | "
                     f"{r['plan_s']:.1f} s | {r['peak_python_mb']:.0f} MB |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan_scale.json").write_text(json.dumps({"results": results, "rss_mb": rss}, indent=1))
    (args.out / "plan_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
