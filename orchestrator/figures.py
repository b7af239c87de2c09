"""The report's figures: [P1] Fig. 4-style training curves and [P1] Fig. 7's layer responses."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from training.models import ARCHS as FAMILIES

if TYPE_CHECKING:
    from orchestrator.report import RunRecord

# [P2] Table 2's names of the five units.
UNIT_NAMES = {"residual": "(a) original", "bn_after_add": "(b) BN after addition",
              "relu_before_add": "(c) ReLU before addition",
              "relu_preact": "(d) ReLU-only pre-activation", "preact": "(e) full pre-activation"}


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


PANEL_TITLES = {"plain": "plain", "residual": "residual (original unit)",
                "preact": "residual (pre-activation)"}


def panels(records: list[RunRecord]) -> list[tuple[str, list[tuple[str, list[RunRecord], bool, int]]]]:
    """What the figure draws: ``(title, [(label, runs, dashed, colour key)])`` per panel.

    A depth study gets [P1] Fig. 4's panels, one per net with a line per depth (and, beside
    pre-activation, the original unit's validation curve dashed). Nets compared at one depth
    (the units of [P2] Table 2, the shortcut variants of Table 1) get a panel per depth with a
    line per net."""
    groups: dict[tuple[str, str], dict[int, list[RunRecord]]] = {}
    for r in records:
        groups.setdefault((r.arch, r.variant), {}).setdefault(r.depth, []).append(r)
    order = sorted(groups, key=lambda g: (FAMILIES.index(g[0]) if g[0] in FAMILIES else 99,
                                          [r.variant for r in records].index(g[1])))
    out = []
    if any(len(by_depth) > 1 for by_depth in groups.values()):
        for arch, variant in order:
            lines = [(f"{arch}-{d}" + (f" [{variant}]" if variant else ""), runs, False, d)
                     for d, runs in sorted(groups[(arch, variant)].items())]
            if arch == "preact" and not variant:
                # Claim 3 compares the two units at the same depth: the original unit's
                # validation curve, dashed, beside each pre-activation depth.
                lines += [(f"residual-{d} (original unit)", groups[("residual", "")][d], True, d)
                          for d in sorted(groups[(arch, variant)]) if d in groups.get(("residual", ""), {})]
            title = PANEL_TITLES.get(arch, UNIT_NAMES.get(arch, arch)) + (f" [{variant}]" if variant else "")
            out.append((title, lines))
    for depth in sorted({r.depth for r in records}):
        here = [g for g in order if depth in groups[g]]
        beyond_families = any(a not in PANEL_TITLES or v for a, v in here)
        if len(here) < 2 or (out and not beyond_families):
            continue
        kind = "shortcut variants" if any(v for _, v in here) and {a for a, _ in here} == {"residual"} \
            else "units" if not any(v for _, v in here) else "nets"
        out.append((f"{kind} at depth {depth}",
                    [(a + (f" [{v}]" if v else ""), groups[(a, v)][depth], False, i)
                     for i, (a, v) in enumerate(here)]))
    if not out:  # a single net
        (arch, variant), = order[:1] or [("plain", "")]
        out.append((PANEL_TITLES.get(arch, arch), [
            (f"{arch}-{d}", runs, False, d) for d, runs in sorted(groups.get((arch, variant), {}).items())]))
    return out


def plot_curves(records: list[RunRecord], path: Path) -> Path:
    """The curves of ``panels``: training error thin, validation error bold, over iterations;
    with several seeds their mean and a band from the lowest to the highest training error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = panels(records)
    columns = min(3, len(plan))
    rows_n = -(-len(plan) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(5 * columns, 4 * rows_n), sharey=True,
                             squeeze=False)
    colours = plt.get_cmap("viridis")
    for ax, (title, lines) in zip(axes.flat, plan):
        keys = sorted({line[3] for line in lines})
        for label, runs, dashed, key in lines:
            colour = colours(keys.index(key) / max(1, len(keys) - 1) * 0.85)
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            if not dashed:
                steps, mean, low, high = mean_curve(runs, "train/error_top1")
                if steps:
                    ax.plot(steps, mean, color=colour, linewidth=0.8, alpha=0.8)
                    if len(runs) > 1:
                        ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
            steps, mean, _, _ = mean_curve(runs, "val/error_top1")
            if steps:
                ax.plot(steps, mean, color=colour, linewidth=1.6 if dashed else 2.4,
                        linestyle="--" if dashed else "-", alpha=0.7 if dashed else 1.0,
                        label=label + ("" if dashed else seeds))
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    for ax in list(axes.flat)[len(plan):]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("top-1 error (%)  thin: train, bold: val")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_responses(records: list[RunRecord]) -> dict[tuple[str, int, str], list[float]]:
    """(arch, depth, variant) -> each layer's response std, the mean over the seeds."""
    out: dict[tuple[str, int, str], list[list[float]]] = {}
    for r in records:
        if r.status == "FINISHED" and r.responses and r.responses.get("std"):
            out.setdefault((r.arch, r.depth, r.variant), []).append(r.responses["std"])
    return {k: [statistics.fmean(layer) for layer in zip(*v)] for k, v in out.items()
            if len({len(x) for x in v}) == 1}


def plot_responses(records: list[RunRecord], path: Path) -> Path | None:
    """[P1] Fig. 7: per net, the std of each 3x3 layer's response by layer index (top) and
    sorted in descending order (bottom), a line per depth; None when no run measured them."""
    curves = mean_responses(records)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({(a, v) for a, _, v in curves}, key=lambda n: (
        FAMILIES.index(n[0]) if n[0] in FAMILIES else 99, n[1]))
    fig, axes = plt.subplots(2, len(nets), figsize=(4.5 * len(nets), 7), squeeze=False,
                             sharey="row")
    colours = plt.get_cmap("viridis")
    depths = sorted({d for _, d, _ in curves})
    for col, (arch, variant) in enumerate(nets):
        for depth in depths:
            stds = curves.get((arch, depth, variant))
            if not stds:
                continue
            colour = colours(depths.index(depth) / max(1, len(depths) - 1) * 0.85)
            label = f"{arch}-{depth}" + (f" [{variant}]" if variant else "")
            axes[0][col].plot(range(1, len(stds) + 1), stds, color=colour, label=label)
            axes[1][col].plot(range(1, len(stds) + 1), sorted(stds, reverse=True), color=colour,
                              label=label)
        axes[0][col].set_title(PANEL_TITLES.get(arch, UNIT_NAMES.get(arch, arch))
                               + (f" [{variant}]" if variant else ""))
        axes[1][col].set_xlabel("layer (top: in order; bottom: sorted by magnitude)")
        for row in (0, 1):
            axes[row][col].grid(alpha=0.3)
            axes[row][col].legend(fontsize=8)
    axes[0][0].set_ylabel("std of the layer response")
    axes[1][0].set_ylabel("std, sorted")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


