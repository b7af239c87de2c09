"""The comparison report of a sweep: tables beside the papers' figures, the papers' claims on
paired seeds (``orchestrator.claims``), figures (``orchestrator.figures``), pace and cost.

Built from plain run records (the MLflow record of a sweep, see ``records_from_mlflow``), so the
report of any finished sweep can be rebuilt from MLflow alone. Everything here except the plot
and the MLflow read is a pure function.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import paper
from orchestrator.claims import render_comparisons, seed_comparisons, worded_verdicts
from orchestrator.figures import UNIT_NAMES, mean_responses, plot_curves, plot_responses
from orchestrator.ledger import time_to_target
from training.models import ARCHS as FAMILIES
from training.perf import INPUT_BOUND, INPUT_NEGLIGIBLE, advice, bound_by


@dataclass
class RunRecord:
    arch: str
    depth: int
    seed: int
    status: str = "FINISHED"
    run_id: str = ""
    params: int | None = None  # model parameters
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    variant: str = ""  # the sweep grid's variant ("" when the grid has none)
    net_variant: str = ""  # the shortcut variant it resolved to ("" for the identity)
    shortcut: str = ""  # the resolved shortcut option (A, B, C)
    eval_crops: int = 1
    # [P1] Fig. 7: the last measurement of the layer responses, {"layers": [...], "std": [...]}.
    responses: dict | None = None
    loader_workers: int = 0

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.depth}" + (f" [{self.variant}]" if self.variant else "")

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


def _by_protocol(values: list[float], protocol: str | None) -> tuple[float | None, str]:
    """Our figure taken the way the paper's was: the best or the median of the seeds (the
    mean when the paper gives none), and its name."""
    values = [v for v in values if v is not None]
    if not values:
        return None, "-"
    n = len(values)
    if n == 1:
        return values[0], "1 run"
    if protocol == paper.BEST5:
        return min(values), f"best of {n}"
    if protocol == paper.MEDIAN5:
        return statistics.median(values), f"median of {n}"
    return statistics.fmean(values), f"mean of {n}"


def _group_order(records: list[RunRecord]):
    variants = list(dict.fromkeys(r.variant for r in records))
    return lambda key: (FAMILIES.index(key[0]) if key[0] in FAMILIES else 99, key[1],
                        variants.index(key[2]))


def summarize(records: list[RunRecord], data_name: str = "", target_error: float | None = None) -> dict:
    """Per (arch, depth, variant): final errors over the seeds, the paper's figure taken by the
    same protocol, verdicts and the papers' claims tested on paired seeds."""
    groups: dict[tuple[str, int, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.arch, r.depth, r.variant), []).append(r)
    rows = []
    for (arch, depth, variant), runs in sorted(groups.items(), key=lambda kv: _group_order(records)(kv[0])):
        done = [r for r in runs if r.status == "FINISHED"]
        first = runs[0]
        figure, others = paper.matching(data_name, arch, depth, first.shortcut, first.net_variant,
                                        first.eval_crops)
        finals = [r.last("val/error_top1") for r in done]
        ours, how = _by_protocol(finals, figure.protocol if figure else None)
        rows.append({
            "arch": arch, "depth": depth, "variant": variant, "net_variant": first.net_variant,
            "shortcut": first.shortcut, "seeds": len(done), "runs": len(runs),
            "params": first.params,
            "train_error_top1": _mean(r.tail_mean("train/error_top1") for r in done),
            "val_error_top1": _mean(finals),
            "val_error_top5": _mean(r.last("val/error_top5") for r in done),
            "val_error_top1_per_seed": finals,
            "val_error_top1_as_paper": ours, "statistic": how,
            "paper_val_error_top1": figure.top1 if figure else None,
            "paper_val_error_top5": figure.top5 if figure else None,
            "paper_failed": bool(figure and figure.top1 is None),
            "paper_source": figure.label() if figure else "",
            "paper_other_protocols": [
                {"figure": f.top1, "source": f.label()} for f in others],
        })
    comparisons = seed_comparisons(records)
    return {"data": data_name, "rows": rows, "observations": observations(rows),
            "verdicts": worded_verdicts(comparisons), "comparisons": comparisons,
            "pace": pace_rows(groups), "ledger": ledger_rows(groups, rows, target_error)}


PERF_KEYS = ("perf/data_wait_fraction", "perf/step_time_ms", "perf/compute_images_per_sec",
             "perf/loader_images_per_sec_per_process")
COST_KEYS = ("cost/device_hours", "cost/usd")


def _net(arch: str, depth: int, variant: str) -> str:
    return f"{arch}-{depth}" + (f" [{variant}]" if variant else "")


def _median_of_windows(runs: list[RunRecord], key: str) -> float | None:
    """The median over every logging window of the runs, each run's first window (start-up:
    the first shards arrive) left out."""
    values = [v for r in runs for _, v in (r.history.get(key) or [])[1:]]
    return statistics.median(values) if values else None


def pace_rows(groups: dict) -> list[dict]:
    """Per net: the data-wait fraction, the step time, what bounds it and, where the input
    pipeline does, the advice (training.perf)."""
    out = []
    for (arch, depth, variant), runs in groups.items():
        wait = _median_of_windows(runs, "perf/data_wait_fraction")
        if wait is None:
            continue
        compute = _median_of_windows(runs, "perf/compute_images_per_sec")
        loader = _median_of_windows(runs, "perf/loader_images_per_sec_per_process")
        out.append({"net": _net(arch, depth, variant), "data_wait_fraction": wait,
                    "step_time_ms": _median_of_windows(runs, "perf/step_time_ms"),
                    "compute_images_per_sec": compute, "loader_images_per_sec": loader,
                    "bound_by": bound_by(wait),
                    "advice": advice(wait, compute, loader, runs[0].loader_workers)})
    return out


def ledger_rows(groups: dict, rows: list[dict], target_error: float | None) -> list[dict]:
    """Per net: device-hours and cost over its runs, and the device-hours to reach the target
    validation error (the config's, else the paper's figure for the net)."""
    figures = {(r["arch"], r["depth"], r["variant"]): r.get("paper_val_error_top1") for r in rows}
    out = []
    for key, runs in groups.items():
        hours = [sum(v for _, v in r.history.get("cost/device_hours") or []) for r in runs]
        if not any(hours):
            continue
        usd = [sum(v for _, v in r.history.get("cost/usd") or []) for r in runs]
        target = target_error if target_error is not None else figures.get(key)
        reached = []
        if target is not None:
            for r, h in zip(runs, hours):
                steps = max((s for s, _ in r.history.get("train/error_top1") or []), default=0)
                t = time_to_target(r.history.get("val/error_top1") or [], target, steps, h)
                if t is not None:
                    reached.append(t)
        out.append({"net": _net(*key), "runs": len(runs), "device_hours": sum(hours),
                    "usd": sum(usd) if any(r.history.get("cost/usd") for r in runs) else None,
                    "target_error": target, "runs_reaching_target": len(reached),
                    "device_hours_to_target": statistics.fmean(reached) if reached else None})
    return out


def render_pace(pace: list[dict]) -> list[str]:
    if not pace:
        return []
    lines = ["", "## What bounds each run", "",
             f"Median over the logging windows of the share of time the training step waited "
             f"for its data (rank 0): input-bound from {INPUT_BOUND:.0%}, compute-bound up to "
             f"{INPUT_NEGLIGIBLE:.0%}, mixed between.", "",
             "| net | data wait | step (ms) | step images/s | loader images/s per process | bound by |",
             "|---|---|---|---|---|---|"]
    for p in pace:
        lines.append(f"| {p['net']} | {p['data_wait_fraction']:.0%} | {_fmt(p['step_time_ms'])} | "
                     f"{_fmt0(p['compute_images_per_sec'])} | {_fmt0(p['loader_images_per_sec'])} | "
                     f"{p['bound_by']} |")
    advised = [p for p in pace if p["advice"]]
    if advised:
        lines += [""] + [f"- {p['net']}: {p['advice']}" for p in advised]
    return lines


def render_ledger(ledger: list[dict]) -> list[str]:
    if not ledger:
        return []
    lines = ["", "## Cost", "",
             "Device-hours: each run's wall time on the cluster times the devices it held (GPUs, "
             "or workers without GPUs), over all its submissions; time to target: until its "
             "validation error first reached the target, the mean over the runs that did.", "",
             "| net | runs | device-hours | cost (USD) | target error | device-hours to target |",
             "|---|---|---|---|---|---|"]
    for e in ledger:
        usd = "-" if e["usd"] is None else f"{e['usd']:,.2f}"
        target = "-" if e["target_error"] is None else f"{e['target_error']:.2f}"
        to = ("not reached" if e["target_error"] is not None and not e["runs_reaching_target"]
              else _fmt(e["device_hours_to_target"]))
        lines.append(f"| {e['net']} | {e['runs']} | {e['device_hours']:.3f} | {usd} | {target} | {to} |")
    return lines


def _fmt0(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _row(rows, arch, depth):
    """The identity-shortcut row of (arch, depth), or None (absent, or several: a grid of
    shortcut options)."""
    found = [r for r in rows if r["arch"] == arch and r["depth"] == depth and not r["net_variant"]]
    return found[0] if len(found) == 1 else None


def _family_label(arch: str, deeper_better: bool) -> str:
    name = {"residual": "residual", "preact": "pre-activation"}.get(arch, UNIT_NAMES.get(arch, arch))
    return f"{name}: deeper is {'better' if deeper_better else 'not better'}"


def observations(rows: list[dict]) -> list[str]:
    """What the means over the seeds show about depth and architecture, with the numbers: not
    verdicts (those come from the paired intervals, ``worded_verdicts``)."""
    out = []
    for arch in FAMILIES:
        depths = sorted({r["depth"] for r in rows if r["arch"] == arch
                         and r["train_error_top1"] is not None and r["val_error_top1"] is not None
                         and _row(rows, arch, r["depth"])})
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
        label = (("degradation" if dt > 0 else "no degradation") if arch == "plain"
                 else _family_label(arch, dt <= 0 and dv <= 0))
        out.append(f"{label}: {text}")
    for depth in sorted({r["depth"] for r in rows}):
        res = _row(rows, "residual", depth)
        pairs = [("residual vs plain", res, _row(rows, "plain", depth), "residual")]
        pairs += [(f"{'pre-activation' if arch == 'preact' else UNIT_NAMES[arch]} vs original",
                   _row(rows, arch, depth), res, "pre-activation" if arch == "preact" else arch)
                  for arch in ("preact", "relu_preact", "relu_before_add", "bn_after_add")]
        for what, a, b, subject in pairs:
            if a and b and a["val_error_top1"] is not None and b["val_error_top1"] is not None:
                better = "better" if a["val_error_top1"] < b["val_error_top1"] else "not better"
                out.append(f"{what} at depth {depth}: {subject} is {better} "
                           f"(val error {a['val_error_top1']:.2f}% vs {b['val_error_top1']:.2f}%)")
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _paper_cell(r: dict, key: str = "paper_val_error_top1") -> str:
    return "fail (>20)" if r.get("paper_failed") and key == "paper_val_error_top1" else _fmt(r.get(key))


def render_table(summary: dict) -> list[str]:
    rows = summary["rows"]
    with_variant = any(r.get("variant") for r in rows)
    head = ["arch", "depth"] + (["variant"] if with_variant else []) + [
        "params", "seeds", "train top-1", "val top-1", "val top-5", "paper top-1", "paper top-5",
        "protocol (ours / paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for r in rows:
        seeds = f"{r['seeds']}" + (f"/{r['runs']}" if r["seeds"] != r["runs"] else "")
        params = "-" if r.get("params") is None else f"{r['params'] / 1e6:.2f}M"
        ours = r.get("val_error_top1_as_paper", r["val_error_top1"])
        protocol = f"{r.get('statistic', '-')} / {r.get('paper_source') or '-'}"
        cells = [r["arch"], str(r["depth"])] + ([r.get("variant") or "-"] if with_variant else []) + [
            params, seeds, _fmt(r["train_error_top1"]), _fmt(ours), _fmt(r["val_error_top5"]),
            _paper_cell(r), _paper_cell(r, "paper_val_error_top5"), protocol]
        lines.append("| " + " | ".join(cells) + " |")
        for other in r.get("paper_other_protocols", []):
            value = "fail" if other["figure"] is None else f"{other['figure']:.2f}"
            notes.append(f"{r['arch']}-{r['depth']}: {value} ({other['source']}), not comparable "
                         "with this run's evaluation" if "crop" in other["source"] else
                         f"{r['arch']}-{r['depth']}: also {value} ({other['source']})")
    if notes:
        lines += ["", "Paper figures of other protocols, not set beside these runs:", ""]
        lines += [f"- {n}" for n in notes]
    return lines


def render_unit_table(summary: dict) -> list[str]:
    """[P2] Table 2's layout when the sweep has several of its units: a row per unit, a
    column per depth, ours and the paper's test error side by side."""
    rows = [r for r in summary["rows"] if r["arch"] in UNIT_NAMES and not r["net_variant"]]
    if len({r["arch"] for r in rows}) < 2:
        return []
    depths = sorted({r["depth"] for r in rows})
    lines = ["", "## [P2] Table 2 layout: the residual units", "",
             "Validation top-1 error, ours (the paper's) in each cell.", "",
             "| unit | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|" + "---|" * len(depths)]
    for arch in UNIT_NAMES:
        cells = []
        for d in depths:
            r = _row(rows, arch, d)
            cells.append("-" if r is None else
                         f"{_fmt(r.get('val_error_top1_as_paper'))} ({_paper_cell(r)})")
        if any(c != "-" for c in cells):
            lines.append(f"| {UNIT_NAMES[arch]} | " + " | ".join(cells) + " |")
    return lines


def _paths(variant: str) -> tuple[str, str]:
    """Table 1's columns for a shortcut variant: what multiplies the shortcut and the branch."""
    name, *options = variant.split() or ["identity"]
    values = dict(o.split("=", 1) for o in options)
    return {"identity": ("1", "1"),
            "scaling": (values.get("shortcut_scale", "?"), values.get("branch_scale", "?")),
            "exclusive_gating": ("1 - g(x)", "g(x)"), "shortcut_gating": ("1 - g(x)", "1"),
            "conv1x1": ("1x1 conv", "1"),
            "dropout": (f"dropout {values.get('shortcut_dropout', '?')}", "1")}.get(name, ("?", "?"))


def render_variant_table(summary: dict) -> list[str]:
    """[P2] Table 1's layout when the sweep varies the original unit's shortcut."""
    rows = [r for r in summary["rows"] if r["arch"] == "residual"]
    if not any(r["net_variant"] for r in rows):
        return []
    lines = ["", "## [P2] Table 1 layout: shortcut variants of the original unit", "",
             "| depth | variant | on shortcut | on branch | val top-1 | paper | protocol (ours / paper) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        shortcut, branch = _paths(r["net_variant"])
        lines.append(f"| {r['depth']} | {r['net_variant'] or 'identity'} | {shortcut} | {branch} | "
                     f"{_fmt(r.get('val_error_top1_as_paper'))} | {_paper_cell(r)} | "
                     f"{r.get('statistic', '-')} / {r.get('paper_source') or '-'} |")
    return lines


def render_markdown(summary: dict, title: str = "Depth comparison") -> str:
    lines = [f"# {title}", ""]
    if summary.get("data"):
        lines += [f"Data: {summary['data']}. Errors in percent; train error is the mean of the "
                  "last 10% of logged points over the seeds, validation error the final "
                  "evaluation, taken over the seeds the way the paper's figure in the same row "
                  "was (best, median or mean: the protocol column).", ""]
    lines += render_table(summary)
    if summary.get("tuning"):
        from orchestrator.tuning import render_tuning

        t = summary["tuning"]
        errors = {net: {float(lr): v for lr, v in by_lr.items()} for net, by_lr in t["errors"].items()}
        lines += render_tuning(errors, t["chosen"], t["split"])
    lines += render_unit_table(summary)
    lines += render_variant_table(summary)
    lines += render_pace(summary.get("pace", []))
    lines += render_ledger(summary.get("ledger", []))
    lines += ["", "## Verdicts", "",
              "The papers' claims, decided on the 95% interval of the difference paired by seed "
              "(the table below); a claim needs two seeds or more.", ""]
    lines += [f"- {v}" for v in summary["verdicts"]] or [
        "- none: no claim of the papers has two paired seeds in this sweep"]
    seeds = max((r["seeds"] for r in summary["rows"]), default=0)
    lines += ["", "## Observations", "",
              "What the means show" + (" (one seed: observations, not verdicts)" if seeds < 2
                                       else " (means over the seeds; verdicts above)") + ".", ""]
    lines += [f"- {v}" for v in summary.get("observations", [])] or ["- not enough finished runs to compare"]
    lines += render_comparisons(summary.get("comparisons", []))
    return "\n".join(lines) + "\n"


def write_report(records: list[RunRecord], folder: Path, data_name: str = "",
                 title: str = "Depth comparison", tuning: dict | None = None,
                 target_error: float | None = None) -> tuple[dict, list[Path]]:
    """``comparison.md``, ``training_curves.png`` and ``summary.json`` in ``folder``, and
    ``layer_responses.png`` when the runs measured their layer responses. ``tuning``: the tune
    stage's record (``{"split", "errors", "chosen"}``), shown as a table."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, data_name, target_error)
    if tuning:
        summary["tuning"] = {"split": tuning["split"], "chosen": tuning["chosen"],
                             "errors": {net: {str(lr): v for lr, v in by_lr.items()}
                                        for net, by_lr in tuning["errors"].items()}}
    summary["layer_responses"] = [
        {"arch": a, "depth": d, "variant": v, "std": stds}
        for (a, d, v), stds in mean_responses(records).items()]
    md = folder / "comparison.md"
    md.write_text(render_markdown(summary, title))
    js = folder / "summary.json"
    js.write_text(json.dumps(summary, indent=1))
    png = plot_curves(records, folder / "training_curves.png")
    responses = plot_responses(records, folder / "layer_responses.png")
    return summary, [md, png, js] + ([responses] if responses else [])


def publish(tracker, parent_id: str, data_name: str, title: str, *, out: Path | None = None,
            log: bool = True, tune_split: str = "",
            target_error: float | None = None) -> tuple[dict, list[Path]]:
    """Build the report of the tracker's sweep from MLflow and log it on the parent run."""
    import tempfile

    from orchestrator.tuning import choose_lr, tuning_errors

    records = records_from_mlflow(tracker)
    tuning = None
    errors = tuning_errors(tracker)
    if errors:
        if not tune_split:  # a report rebuilt later: the sweep's run recorded the split
            tune_split = tracker.client.get_run(parent_id).data.params.get("tune.split", "")
        try:
            tuning = {"split": tune_split or "?", "errors": errors, "chosen": choose_lr(errors)}
        except ValueError:
            tuning = {"split": tune_split or "?", "errors": errors, "chosen": {}}
    with tempfile.TemporaryDirectory(prefix="depthlab-report-") as tmp:
        summary, files = write_report(records, out or Path(tmp), data_name, title, tuning=tuning,
                                      target_error=target_error)
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
                     for k in ("train/error_top1", "val/error_top1", "val/error_top5",
                               *PERF_KEYS, *COST_KEYS)},
            loader_workers=int(params.get("loader_workers") or 0),
            variant=params.get("variant", ""),
            net_variant="" if params.get("shortcut_variant_resolved", "identity") == "identity"
            else params["shortcut_variant_resolved"],
            shortcut=params.get("shortcut", ""), eval_crops=int(params.get("eval_crops") or 1),
            responses=tracker.last_json(run.info.run_id, "responses"),
        ))
    return records
