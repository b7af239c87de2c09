"""The papers' claims tested on a sweep's runs, paired by seed: intervals, verdicts and the
seeds each claim needs. Pure functions of the run records (``orchestrator.report.RunRecord``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.report import RunRecord


# Margin, in points of error: "no higher" means the 95% interval of the paired difference
# stays below it, "about the same" that it stays within +- it. One point is small beside the
# effects the papers show (several points) and above the noise of a well-measured run.
NO_WORSE_MARGIN = 1.0


@dataclass(frozen=True)
class Claim:
    """A statement of the papers about ``a - b``: nets named (arch, shortcut variant), at the
    sweep's deepest / shallowest depth or at every depth both have ("same"), on the training
    error (``train``: [P1]'s degradation figures) or the final validation error (``val``: the
    papers' tables of test error)."""

    label: str
    a: tuple[str, str]
    b: tuple[str, str]
    depth_a: str
    depth_b: str
    expected: str  # "higher" | "no higher" | "lower" | "about the same"
    metric: str = "train"
    over: tuple[str, ...] = ("end",)
    # The depths the paper makes the claim at (empty: any); elsewhere a verdict tests whether
    # it carries over, and says so.
    paper_depths: tuple[int, ...] = ()


# [P1] Fig. 4/6: the deeper plain net trains worse throughout; the deeper residual net ends
# lower (it may start slower). [P2] Fig. 1: pre-activation's training error ends no higher than
# the original's at 1001 layers (at 164 its Sec. 4.2 reports a slightly higher training loss
# with a lower test error); its test error is lower at 110, 164 and 1001 (Tables 2-3) and at
# ImageNet 152/200 (Table 5). [P2] Tables 1 and 2 for the shortcut and unit variants.
CLAIMS = (
    Claim("degradation", ("plain", ""), ("plain", ""), "deep", "shallow", "higher",
          over=("end", "run")),
    Claim("residual learning", ("residual", ""), ("residual", ""), "deep", "shallow", "no higher"),
    Claim("pre-activation", ("preact", ""), ("residual", ""), "deep", "deep", "no higher",
          paper_depths=(1001,)),
    Claim("full pre-activation beats the original", ("preact", ""), ("residual", ""), "same",
          "same", "lower", "val", paper_depths=(110, 164, 1001, 152, 200)),
    Claim("ReLU-only pre-activation is about as good as the original", ("relu_preact", ""),
          ("residual", ""), "same", "same", "about the same", "val", paper_depths=(110, 164)),
    Claim("BN after addition is worse than the original", ("bn_after_add", ""), ("residual", ""),
          "same", "same", "higher", "val", paper_depths=(110, 164)),
    Claim("ReLU before addition is worse than the original", ("relu_before_add", ""),
          ("residual", ""), "same", "same", "higher", "val", paper_depths=(110, 164)),
    Claim("exclusive gating (b_g = -6) is worse than identity",
          ("residual", "exclusive_gating gate_bias=-6"), ("residual", ""), "same", "same",
          "higher", "val", paper_depths=(110,)),
    Claim("shortcut-only gating (b_g = -6) is about as good as identity",
          ("residual", "shortcut_gating gate_bias=-6"), ("residual", ""), "same", "same",
          "about the same", "val", paper_depths=(110,)),
    Claim("constant scaling (0.5, 0.5) is worse than identity",
          ("residual", "scaling shortcut_scale=0.5 branch_scale=0.5"), ("residual", ""), "same",
          "same", "higher", "val", paper_depths=(110,)),
    Claim("a 1x1 conv shortcut is worse than identity", ("residual", "conv1x1"),
          ("residual", ""), "same", "same", "higher", "val", paper_depths=(110,)),
    Claim("a dropout shortcut is worse than identity", ("residual", "dropout shortcut_dropout=0.5"),
          ("residual", ""), "same", "same", "higher", "val", paper_depths=(110,)),
)


def run_mean(record: RunRecord, key: str) -> float | None:
    """Mean of a metric over the whole run (its logged points): the run's curve in one number,
    so that "higher over the run" is not decided by the last few points alone."""
    points = record.history.get(key) or []
    return statistics.fmean(v for _, v in points) if points else None


def _finished_by_net(records: list[RunRecord]) -> dict[tuple, RunRecord]:
    """(arch, shortcut variant, depth, seed) -> the finished run; nets with several runs per
    seed (a grid of shortcut options) are left out: no claim could tell them apart."""
    by: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.status == "FINISHED":
            by.setdefault((r.arch, r.net_variant, r.depth, r.seed), []).append(r)
    return {k: v[0] for k, v in by.items() if len(v) == 1}


def paired_difference(records: list[RunRecord], a: tuple, b: tuple, measure) -> list[float]:
    """``measure(run of a) - measure(run of b)`` for each seed both finished: paired by seed,
    so the data order and the draw of the seed cancel out of the comparison. ``a`` and ``b``
    are (arch, depth) or (arch, shortcut variant, depth)."""
    a, b = (a if len(a) == 3 else (a[0], "", a[1])), (b if len(b) == 3 else (b[0], "", b[1]))
    by = _finished_by_net(records)
    seeds = sorted({k[3] for k in by if k[:3] == a} & {k[3] for k in by if k[:3] == b})
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
    the whole interval is above 0, "lower" when it is below 0; "no higher" holds when it is
    below ``margin`` and fails when the whole interval is above it; "about the same" holds
    when it lies within +-``margin`` and fails when it lies wholly outside."""
    ci = interval(diffs)
    if ci is None:
        return "open"
    lo, hi = ci
    if claim == "higher":
        return "holds" if lo > 0 else "fails" if hi < 0 else "open"
    if claim == "lower":
        return "holds" if hi < 0 else "fails" if lo > 0 else "open"
    if claim == "about the same":
        return "holds" if -margin < lo and hi < margin else (
            "fails" if lo > margin or hi < -margin else "open")
    return "holds" if hi < margin else "fails" if lo > margin else "open"


def worded_verdicts(comparisons: list[dict]) -> list[str]:
    """One sentence per claim decided on two or more paired seeds, from its interval: what a
    single seed shows is an observation, not a verdict."""
    out = []
    for c in comparisons:
        if c["ci95"] is None:
            continue
        error = {("train", "end"): "training error at the end",
                 ("train", "run"): "training error over the run",
                 ("val", "end"): "final validation error"}[(c.get("metric", "train"), c["over"])]
        word = {"holds": "holds", "fails": "fails", "open": "is open"}[c["verdict"]]
        need = (f"; about {c['seeds_needed']} seeds would settle it"
                if c["verdict"] == "open" and c["seeds_needed"] else "")
        depth = int(c["a"].split("-")[1].split()[0])
        scope = c.get("paper_depths") or []
        beyond = (f" (the paper makes this claim at {'/'.join(map(str, scope))} layers: here it is "
                  f"tested at {depth}, whether it carries over)" if scope and depth not in scope else "")
        out.append(f"{c['claim']} ({c['a']} vs {c['b']}, {c['expected']}): {word}: "
                   f"{c['mean']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] points of "
                   f"{error}, {c['seeds']} seeds{need}{beyond}")
    return out


def _threshold_distance(claim: str, mean: float, margin: float = NO_WORSE_MARGIN) -> float:
    """How far the mean difference is from where the claim's verdict would change."""
    if claim in ("higher", "lower"):
        return abs(mean)
    if claim == "about the same":
        return margin - abs(mean)
    return abs(margin - mean)


def seed_comparisons(records: list[RunRecord]) -> list[dict]:
    """The papers' claims, paired by seed: each with its interval, verdict and the seeds it
    needs. Claims whose two nets are not both in the sweep are left out."""
    depths = sorted({r.depth for r in records})
    measures = {("train", "end"): lambda r: r.tail_mean("train/error_top1"),
                ("train", "run"): lambda r: run_mean(r, "train/error_top1"),
                ("val", "end"): lambda r: r.last("val/error_top1")}
    nets = {(r.arch, r.net_variant, r.depth) for r in records}
    out = []
    for claim in CLAIMS:
        if claim.depth_a == "same":
            pairs = [(d, d) for d in depths
                     if (*claim.a, d) in nets and (*claim.b, d) in nets]
        elif len(depths) >= 2 or claim.depth_a == claim.depth_b:
            # Two nets at the deepest depth need only one; deep against shallow needs two.
            pick = {"deep": depths[-1], "shallow": depths[0]}
            pairs = [(pick[claim.depth_a], pick[claim.depth_b])]
        else:
            pairs = []
        for depth_a, depth_b in pairs:
            a, b = (*claim.a, depth_a), (*claim.b, depth_b)
            for when in claim.over:
                diffs = paired_difference(records, a, b, measures[(claim.metric, when)])
                if not diffs:
                    continue
                mean = statistics.fmean(diffs)
                ci = interval(diffs)
                out.append({
                    "claim": claim.label, "a": _net_name(a), "b": _net_name(b),
                    "expected": claim.expected, "over": when, "metric": claim.metric,
                    "seeds": len(diffs), "diffs": diffs, "mean": mean,
                    "ci95": list(ci) if ci else None, "verdict": decide(diffs, claim.expected),
                    "paper_depths": list(claim.paper_depths),
                    "seeds_needed": seeds_needed(diffs, _threshold_distance(claim.expected, mean)),
                })
    return out


def _net_name(net: tuple[str, str, int]) -> str:
    arch, variant, depth = net
    return f"{arch}-{depth}" + (f" [{variant}]" if variant else "")


def render_comparisons(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["", "## The papers' claims, seed by seed", "",
             "Top-1 error of a minus b, paired by seed (points): the training error at the end "
             "of the run (mean of its last 10% of points) or over the whole run, or the final "
             "validation error; 95% t interval. \"no higher\" holds when the interval stays "
             f"below +{NO_WORSE_MARGIN:g} point, \"about the same\" when it stays within "
             f"+-{NO_WORSE_MARGIN:g}.", "",
             "| claim | a | b | a should be | error | seeds | a - b | 95% interval | verdict | seeds needed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        ci = "-" if c["ci95"] is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        over = {("train", "end"): "train, end of run", ("train", "run"): "train, whole run",
                ("val", "end"): "val, final"}[(c.get("metric", "train"), c["over"])]
        need = "-" if c["seeds_needed"] is None else str(c["seeds_needed"])
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {c['expected']} | {over} | "
                     f"{c['seeds']} | {c['mean']:+.2f} | {ci} | {c['verdict']} | {need} |")
    return lines


