"""Each net at its own learning rate: the ``tune`` stage of a sweep.

Comparing architectures at one shared learning rate favours the net the rate was tuned for:
two units whose gradients differ in scale take steps of different effective size. A spec's
``tune`` section trains every net of the grid at each candidate rate on tuning seeds, scores
each run by its final error on a held-out split (never the split the report uses), and the
grid's seeds then run at each net's best rate. The tuning runs are ordinary runs of the sweep
(Ray Train, MLflow children tagged ``depthlab.role = tune``), so they share its concurrency,
retries and resume-by-sweep-id; the choice is a pure function of their recorded errors and is
made again, identically, when a sweep is resubmitted.
"""

from __future__ import annotations

import statistics

from orchestrator.spec import run_key


def choose_lr(errors: dict[str, dict[float, list[float]]]) -> dict[str, float]:
    """Per net: the candidate with the lowest mean error over its tuning seeds; a tie goes to
    the smaller rate (the more conservative choice). Candidates with no finished run are left
    out; a net with none at all is an error, named."""
    chosen = {}
    for net, by_lr in errors.items():
        scored = [(statistics.fmean(v), lr) for lr, v in by_lr.items() if v]
        if not scored:
            raise ValueError(f"no tuning run of {net} finished: its learning rate cannot be "
                             "chosen (resubmit the sweep to retry them)")
        chosen[net] = min(scored)[1]
    return chosen


def at_edge(candidates, chosen: float) -> str | None:
    """"smallest" or "largest" when ``chosen`` is that end of the candidates (two or more): the
    best rate may lie beyond the range tried."""
    tried = sorted(candidates)
    if len(tried) < 2 or chosen not in (tried[0], tried[-1]):
        return None
    return "smallest" if chosen == tried[0] else "largest"


def render_tuning(errors: dict[str, dict[float, list[float]]], chosen: dict[str, float],
                  split: str) -> list[str]:
    """The tuning table of the report: each net's mean error per candidate, the choice marked."""
    if not errors:
        return []
    lrs = sorted({lr for by_lr in errors.values() for lr in by_lr})
    lines = ["", "## Learning rates, tuned per net", "",
             f"Each net trained at each candidate rate on the tuning seeds; final top-1 error on "
             f"the held-out split `{split}` (mean over the tuning seeds); the grid's seeds ran at "
             "the rate in bold.", "",
             "| net | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |",
             "|---|" + "---|" * (len(lrs) + 1)]
    for net, by_lr in errors.items():
        cells = []
        for lr in lrs:
            values = by_lr.get(lr) or []
            text = f"{statistics.fmean(values):.2f}" if values else "-"
            cells.append(f"**{text}**" if lr == chosen.get(net) else text)
        choice = f"{chosen[net]:g}" if net in chosen else "-"
        lines.append(f"| {net} | " + " | ".join(cells) + f" | {choice} |")
    edges = [(net, chosen[net], at_edge([lr for lr, v in by_lr.items() if v], chosen[net]))
             for net, by_lr in errors.items() if net in chosen]
    notes = [f"- {net}: the best rate is the {edge} tried ({lr:g}); its best may lie "
             f"{'below' if edge == 'smallest' else 'above'} the range: widen `tune.lr` to see"
             for net, lr, edge in edges if edge]
    return lines + ([""] + notes if notes else [])


def tuning_errors(tracker) -> dict[str, dict[float, list[float]]]:
    """The tune stage's record, read back from MLflow: net -> lr -> final errors of its
    finished tuning runs."""
    errors: dict[str, dict[float, list[float]]] = {}
    for run in tracker.children("tune"):
        p = run.data.params
        by_lr = errors.setdefault(run_key(p["arch"], int(p["depth"]), p.get("variant", "")), {})
        values = by_lr.setdefault(float(p["lr"]), [])
        err = run.data.metrics.get("val/error_top1")  # the last value: the final evaluation
        if run.info.status == "FINISHED" and err is not None:
            values.append(err)
    return errors
