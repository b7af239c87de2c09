"""The comparison report of a sweep: a table beside the papers' figures, curves, verdicts.

Built from plain run records (the MLflow record of a sweep, see ``records_from_mlflow``), so the
report of any finished sweep can be rebuilt from MLflow alone. Everything here except the plot
and the MLflow read is a pure function.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("plain", "residual", "preact")

# Top-1 error (%) the papers report, keyed by (data, arch, depth). [P1] Table 2 (ImageNet, 10-crop,
# option A), Table 3 (ResNet-50/101/152, B), Table 6 (CIFAR-10); [P2] Table 3 (CIFAR-10).
PAPER_TOP1 = {
    ("imagenet", "plain", 18): 27.94, ("imagenet", "plain", 34): 28.54,
    ("imagenet", "residual", 18): 27.88, ("imagenet", "residual", 34): 25.03,
    ("imagenet", "residual", 50): 22.85, ("imagenet", "residual", 101): 21.75,
    ("imagenet", "residual", 152): 21.43,
    ("imagenet", "preact", 152): 21.1, ("imagenet", "preact", 200): 20.7,
    ("cifar10", "residual", 20): 8.75, ("cifar10", "residual", 32): 7.51,
    ("cifar10", "residual", 44): 7.17, ("cifar10", "residual", 56): 6.97,
    ("cifar10", "residual", 110): 6.43, ("cifar10", "residual", 1202): 7.93,
    ("cifar10", "residual", 164): 5.93, ("cifar10", "residual", 1001): 7.61,
    ("cifar10", "preact", 110): 6.37, ("cifar10", "preact", 164): 5.46,
    ("cifar10", "preact", 1001): 4.92,
}
PAPER_TOP5 = {
    ("imagenet", "plain", 34): 10.02, ("imagenet", "residual", 34): 7.76,
    ("imagenet", "residual", 50): 6.71, ("imagenet", "residual", 101): 6.05,
    ("imagenet", "residual", 152): 5.71, ("imagenet", "preact", 152): 5.5,
    ("imagenet", "preact", 200): 5.3,
}


@dataclass
class RunRecord:
    arch: str
    depth: int
    seed: int
    status: str = "FINISHED"
    run_id: str = ""
    params: int | None = None  # model parameters
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def last(self, key: str) -> float | None:
        points = self.history.get(key) or []
        return points[-1][1] if points else None

    def tail_mean(self, key: str, fraction: float = 0.1) -> float | None:
        """Mean of the last ``fraction`` of the points (at least one): less noisy than the last."""
        points = self.history.get(key) or []
        if not points:
            return None
        n = max(1, round(len(points) * fraction))
        return statistics.fmean(v for _, v in points[-n:])


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(records: list[RunRecord], data_name: str = "") -> dict:
    """Per (arch, depth): final errors averaged over seeds, the paper's figure, and verdicts."""
    groups: dict[tuple[str, int], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.arch, r.depth), []).append(r)
    rows = []
    for (arch, depth), runs in sorted(groups.items(), key=lambda kv: (
            FAMILIES.index(kv[0][0]) if kv[0][0] in FAMILIES else 9, kv[0][1])):
        done = [r for r in runs if r.status == "FINISHED"]
        rows.append({
            "arch": arch, "depth": depth, "seeds": len(done), "runs": len(runs),
            "params": runs[0].params,
            "train_error_top1": _mean(r.tail_mean("train/error_top1") for r in done),
            "val_error_top1": _mean(r.last("val/error_top1") for r in done),
            "val_error_top5": _mean(r.last("val/error_top5") for r in done),
            "val_error_top1_per_seed": [r.last("val/error_top1") for r in done],
            "paper_val_error_top1": PAPER_TOP1.get((data_name, arch, depth)),
            "paper_val_error_top5": PAPER_TOP5.get((data_name, arch, depth)),
        })
    return {"data": data_name, "rows": rows, "verdicts": verdicts(rows),
            "comparisons": seed_comparisons(records)}


def _row(rows, arch, depth):
    return next((r for r in rows if r["arch"] == arch and r["depth"] == depth), None)


def verdicts(rows: list[dict]) -> list[str]:
    """Statements in words about depth and architecture, each with the numbers behind it."""
    out = []
    for arch in FAMILIES:
        depths = sorted(r["depth"] for r in rows if r["arch"] == arch
                        and r["train_error_top1"] is not None and r["val_error_top1"] is not None)
        if len(depths) < 2:
            continue
        lo, hi = _row(rows, arch, depths[0]), _row(rows, arch, depths[-1])
        dt = hi["train_error_top1"] - lo["train_error_top1"]
        dv = hi["val_error_top1"] - lo["val_error_top1"]
        numbers = (f"train error {hi['train_error_top1']:.2f}% vs {lo['train_error_top1']:.2f}%, "
                   f"val error {hi['val_error_top1']:.2f}% vs {lo['val_error_top1']:.2f}%")
        a, b = f"{arch}-{depths[-1]}", f"{arch}-{depths[0]}"
        if dt > 0 and dv > 0:
            text = f"{a} trains and validates worse than {b} ({numbers})"
        elif dt > 0:
            text = f"{a} trains worse but validates no worse than {b} ({numbers})"
        elif dv > 0:
            text = f"{a} trains no worse but validates worse than {b} ({numbers})"
        else:
            text = f"{a} trains and validates at least as well as {b} ({numbers})"
        label = {"plain": "degradation" if dt > 0 else "no degradation",
                 "residual": "residual: deeper is better" if dt <= 0 and dv <= 0
                 else "residual: deeper is not better",
                 "preact": "pre-activation: deeper is better" if dt <= 0 and dv <= 0
                 else "pre-activation: deeper is not better"}[arch]
        out.append(f"{label}: {text}")
    for depth in sorted({r["depth"] for r in rows}):
        pre, res, plain = (_row(rows, a, depth) for a in ("preact", "residual", "plain"))
        if res and plain and res["val_error_top1"] is not None and plain["val_error_top1"] is not None:
            better = "better" if res["val_error_top1"] < plain["val_error_top1"] else "not better"
            out.append(f"residual vs plain at depth {depth}: residual is {better} "
                       f"(val error {res['val_error_top1']:.2f}% vs {plain['val_error_top1']:.2f}%)")
        if pre and res and pre["val_error_top1"] is not None and res["val_error_top1"] is not None:
            better = "better" if pre["val_error_top1"] < res["val_error_top1"] else "not better"
            out.append(f"pre-activation vs original at depth {depth}: pre-activation is {better} "
                       f"(val error {pre['val_error_top1']:.2f}% vs {res['val_error_top1']:.2f}%)")
    return out


# ---------------------------------------------------------------- comparisons across seeds

# Non-inferiority margin, in points of error: "no higher" means the 95% interval of the paired
# difference stays below it. One point is small beside the effects the papers show (several
# points) and above the noise of a well-measured run.
NO_WORSE_MARGIN = 1.0
# (label, run a, run b, what the papers say of a's training error against b's, and when):
# [P1] Fig. 4/6: the deeper plain net trains worse throughout; the deeper residual net ends
# lower (it may start slower); [P2] Fig. 1: pre-activation ends no higher than the original
# (shown at 1001 layers; at 164 its Sec. 4.2 reports a slightly higher training loss at
# convergence with a lower test error, so at small depths this claim may well fail).
CLAIMS = (
    ("degradation", "plain", "deep", "plain", "shallow", "higher", ("end", "run")),
    ("residual learning", "residual", "deep", "residual", "shallow", "no higher", ("end",)),
    ("pre-activation", "preact", "deep", "residual", "deep", "no higher", ("end",)),
)


def run_mean(record: RunRecord, key: str) -> float | None:
    """Mean of a metric over the whole run (its logged points): the run's curve in one number,
    so that "higher over the run" is not decided by the last few points alone."""
    points = record.history.get(key) or []
    return statistics.fmean(v for _, v in points) if points else None


def paired_difference(records: list[RunRecord], a: tuple[str, int], b: tuple[str, int],
                      measure) -> list[float]:
    """``measure(run of a) - measure(run of b)`` for each seed both finished: paired by seed,
    so the data order and the draw of the seed cancel out of the comparison."""
    by = {(r.arch, r.depth, r.seed): r for r in records if r.status == "FINISHED"}
    seeds = sorted({s for (arch, depth, s) in by if (arch, depth) == a}
                   & {s for (arch, depth, s) in by if (arch, depth) == b})
    out = []
    for seed in seeds:
        x, y = measure(by[(*a, seed)]), measure(by[(*b, seed)])
        if x is not None and y is not None:
            out.append(x - y)
    return out


def interval(diffs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean difference; None below two seeds."""
    if len(diffs) < 2:
        return None
    from scipy.stats import t

    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t.ppf(0.5 + level / 2, len(diffs) - 1) * sd / len(diffs) ** 0.5
    return mean - half, mean + half


def seeds_needed(diffs: list[float], bound: float, level: float = 0.95) -> int | None:
    """Seeds for the interval's half-width to fit in ``bound`` (the distance from the mean
    difference to the decision threshold) at the spread these seeds show; None if never."""
    if len(diffs) < 2 or bound <= 0:
        return None
    from scipy.stats import t

    sd = statistics.stdev(diffs)
    for n in range(2, 101):
        if t.ppf(0.5 + level / 2, n - 1) * sd / n ** 0.5 < bound:
            return n
    return None


def decide(diffs: list[float], claim: str, margin: float = NO_WORSE_MARGIN) -> str:
    """``"holds"``, ``"fails"`` or ``"open"`` for a claim about ``a - b``: "higher" holds when
    the whole interval is above 0; "no higher" when it is below ``margin`` and fails when the
    whole interval is above it."""
    ci = interval(diffs)
    if ci is None:
        return "open"
    lo, hi = ci
    if claim == "higher":
        return "holds" if lo > 0 else "fails" if hi < 0 else "open"
    return "holds" if hi < margin else "fails" if lo > margin else "open"


def seed_comparisons(records: list[RunRecord]) -> list[dict]:
    """The papers' three claims, tested on the recorded training error, paired by seed: at the
    end of the run and over the whole run, each with its interval and the seeds it needs."""
    depths = sorted({r.depth for r in records})
    if len(depths) < 2:
        return []
    pick = {"deep": depths[-1], "shallow": depths[0]}
    out = []
    measures = {"end": lambda r: r.tail_mean("train/error_top1"),
                "run": lambda r: run_mean(r, "train/error_top1")}
    for label, arch_a, which_a, arch_b, which_b, claim, whens in CLAIMS:
        a, b = (arch_a, pick[which_a]), (arch_b, pick[which_b])
        for when in whens:
            measure = measures[when]
            diffs = paired_difference(records, a, b, measure)
            if not diffs:
                continue
            mean = statistics.fmean(diffs)
            threshold = 0.0 if claim == "higher" else NO_WORSE_MARGIN
            ci = interval(diffs)
            out.append({
                "claim": label, "a": f"{a[0]}-{a[1]}", "b": f"{b[0]}-{b[1]}",
                "expected": claim, "over": when, "seeds": len(diffs), "diffs": diffs,
                "mean": mean, "ci95": list(ci) if ci else None,
                "verdict": decide(diffs, claim),
                "seeds_needed": seeds_needed(diffs, abs(threshold - mean)),
            })
    return out


def render_comparisons(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["", "## The papers' claims, seed by seed", "",
             f"Training top-1 error of a minus b, paired by seed (points); 95% t interval. "
             f"\"no higher\" holds when the interval stays below +{NO_WORSE_MARGIN:g} point.", "",
             "| claim | a | b | a should be | over | seeds | a - b | 95% interval | verdict | seeds needed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        ci = "-" if c["ci95"] is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        over = {"end": "end of run", "run": "whole run"}[c["over"]]
        need = "-" if c["seeds_needed"] is None else str(c["seeds_needed"])
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {c['expected']} | {over} | "
                     f"{c['seeds']} | {c['mean']:+.2f} | {ci} | {c['verdict']} | {need} |")
    return lines


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def render_markdown(summary: dict, title: str = "Depth comparison") -> str:
    lines = [f"# {title}", ""]
    if summary.get("data"):
        lines += [f"Data: {summary['data']}. Errors in percent; train error is the mean of the "
                  "last 10% of logged points, validation error the final evaluation.", ""]
    lines += ["| arch | depth | params | seeds | train top-1 | val top-1 | val top-5 | paper top-1 | paper top-5 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        seeds = f"{r['seeds']}" + (f"/{r['runs']}" if r["seeds"] != r["runs"] else "")
        params = "-" if r.get("params") is None else f"{r['params'] / 1e6:.2f}M"
        lines.append(f"| {r['arch']} | {r['depth']} | {params} | {seeds} | {_fmt(r['train_error_top1'])} | "
                     f"{_fmt(r['val_error_top1'])} | {_fmt(r['val_error_top5'])} | "
                     f"{_fmt(r['paper_val_error_top1'])} | {_fmt(r['paper_val_error_top5'])} |")
    lines += ["", "## Verdicts", ""]
    lines += [f"- {v}" for v in summary["verdicts"]] or ["- not enough finished runs to compare"]
    lines += render_comparisons(summary.get("comparisons", []))
    return "\n".join(lines) + "\n"


def mean_curve(records: list[RunRecord], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """``(steps, mean, low, high)`` over the runs (seeds) at the steps they all logged."""
    histories = [dict(r.history.get(key) or []) for r in records]
    histories = [h for h in histories if h]
    if not histories:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(h) for h in histories)))
    values = [[h[s] for h in histories] for s in steps]
    return (steps, [statistics.fmean(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def plot_curves(records: list[RunRecord], path: Path) -> Path:
    """[P1] Fig. 4 style: one panel per family, a colour per depth, training error thin and
    validation error bold, over iterations. With several seeds: their mean, and a band from
    the lowest to the highest training error at each iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in FAMILIES if any(r.arch == a for r in records)] or ["plain"]
    depths = sorted({r.depth for r in records})
    colours = plt.get_cmap("viridis")
    colour = {d: colours(i / max(1, len(depths) - 1) * 0.85) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for depth in depths:
            runs = [r for r in records if r.arch == arch and r.depth == depth]
            if not runs:
                continue
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            steps, mean, low, high = mean_curve(runs, "train/error_top1")
            if steps:
                ax.plot(steps, mean, color=colour[depth], linewidth=0.8, alpha=0.8)
                if len(runs) > 1:
                    ax.fill_between(steps, low, high, color=colour[depth], alpha=0.15, linewidth=0)
            steps, mean, _, _ = mean_curve(runs, "val/error_top1")
            if steps:
                ax.plot(steps, mean, color=colour[depth], linewidth=2.4,
                        label=f"{arch}-{depth}{seeds}")
        if arch == "preact":
            # Claim 3 compares the two units at the same depth: the original unit's validation
            # curve, dashed, beside each pre-activation depth.
            for depth in depths:
                if not any(r.arch == arch and r.depth == depth for r in records):
                    continue
                steps, mean, _, _ = mean_curve(
                    [r for r in records if r.arch == "residual" and r.depth == depth], "val/error_top1")
                if steps:
                    ax.plot(steps, mean, color=colour[depth], linewidth=1.6, linestyle="--",
                            alpha=0.7, label=f"residual-{depth} (original unit)")
        ax.set_title({"plain": "plain", "residual": "residual (original unit)",
                      "preact": "residual (pre-activation)"}[arch])
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0][0].set_ylabel("top-1 error (%)  thin: train, bold: val")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records: list[RunRecord], folder: Path, data_name: str = "",
                 title: str = "Depth comparison") -> tuple[dict, list[Path]]:
    """``comparison.md``, ``training_curves.png`` and ``summary.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, data_name)
    md = folder / "comparison.md"
    md.write_text(render_markdown(summary, title))
    js = folder / "summary.json"
    js.write_text(json.dumps(summary, indent=1))
    png = plot_curves(records, folder / "training_curves.png")
    return summary, [md, png, js]


def publish(tracker, parent_id: str, data_name: str, title: str, *, out: Path | None = None,
            log: bool = True) -> tuple[dict, list[Path]]:
    """Build the report of the tracker's sweep from MLflow and log it on the parent run."""
    import tempfile

    records = records_from_mlflow(tracker)
    with tempfile.TemporaryDirectory(prefix="depthlab-report-") as tmp:
        summary, files = write_report(records, out or Path(tmp), data_name, title)
        if log:
            tracker.log_files(parent_id, files, "report")
    return summary, files


def records_from_mlflow(tracker) -> list[RunRecord]:
    """The run records of a sweep, read back from its MLflow child runs."""
    records = []
    for run in tracker.children():
        params = run.data.params
        records.append(RunRecord(
            arch=params.get("arch", run.data.tags.get("arch", "?")),
            depth=int(params.get("depth", run.data.tags.get("depth", 0))),
            seed=int(params.get("seed", 0)), status=run.info.status, run_id=run.info.run_id,
            params=int(params["model_params"]) if params.get("model_params") else None,
            history={k: tracker.history(run.info.run_id, k)
                     for k in ("train/error_top1", "val/error_top1", "val/error_top5")},
        ))
    return records
