import json

import pytest

from orchestrator.report import RunRecord, observations, render_markdown, summarize, write_report


def curve(start, end, n=20):
    return [(i * 10, start + (end - start) * i / (n - 1)) for i in range(n)]


def record(arch, depth, train_end, val_end, seed=0):
    return RunRecord(arch, depth, seed, history={
        "train/error_top1": curve(90, train_end), "val/error_top1": curve(90, val_end, 4),
        "val/error_top5": curve(50, val_end / 3, 4)})


DEGRADATION = [record("plain", 8, 30, 35), record("plain", 20, 40, 45),
               record("residual", 8, 28, 33), record("residual", 20, 20, 26),
               record("preact", 20, 18, 24)]


def test_observations_state_what_the_means_show_with_numbers():
    summary = summarize(DEGRADATION)
    text = "\n".join(summary["observations"])
    assert "degradation: plain-20 trains and validates worse than plain-8" in text
    assert "residual: deeper is better" in text
    assert "pre-activation vs original at depth 20: pre-activation is better" in text
    assert "residual vs plain at depth 20: residual is better (val error 26.00% vs 45.00%)" in text


def test_no_degradation_is_reported_as_such():
    rows = summarize([record("plain", 8, 40, 45), record("plain", 20, 30, 35)])["rows"]
    assert observations(rows)[0].startswith("no degradation: plain-20 trains and validates at least as well")


def test_seeds_are_averaged_and_failed_runs_left_out():
    runs = [record("residual", 20, 20, 30, seed=0), record("residual", 20, 30, 40, seed=1),
            RunRecord("residual", 20, 2, status="FAILED")]
    row = summarize(runs)["rows"][0]
    assert row["seeds"] == 2 and row["runs"] == 3 and row["val_error_top1"] == 35.0
    assert "| residual | 20 | - | 2/3 |" in render_markdown(summarize(runs))


def test_paper_column_only_for_the_papers_data():
    assert summarize([record("residual", 20, 5, 9)], "cifar10")["rows"][0]["paper_val_error_top1"] == 8.75
    assert summarize([record("residual", 20, 5, 9)], "synthetic")["rows"][0]["paper_val_error_top1"] is None


def test_write_report_produces_the_three_artifacts(tmp_path):
    summary, files = write_report(DEGRADATION, tmp_path, "synthetic")
    assert [f.name for f in files] == ["comparison.md", "training_curves.png", "summary.json"]
    assert files[1].read_bytes()[:4] == b"\x89PNG" and files[1].stat().st_size > 10_000
    assert json.loads(files[2].read_text())["observations"] == summary["observations"]


def test_interval_and_seeds_needed_against_hand_computed_values():
    from orchestrator.claims import interval, seeds_needed

    # mean 2, sd 1 over 3 seeds; t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    lo, hi = interval([1.0, 2.0, 3.0])
    assert abs(lo - (2 - 2.4841)) < 1e-3 and abs(hi - (2 + 2.4841)) < 1e-3
    assert interval([5.0]) is None
    # sd 1: half-widths 8.98 (n=2), 2.48 (3), 1.59 (4), 1.24 (5): below 1.5 from n = 5
    assert seeds_needed([1.0, 2.0, 3.0], 1.5) == 5
    assert seeds_needed([1.0, 2.0, 3.0], 0.0) is None


def test_claims_are_decided_from_paired_seeds():
    from orchestrator.claims import decide, seed_comparisons

    assert decide([10.0, 12.0, 11.0], "higher") == "holds"
    assert decide([-1.0, 1.0, 0.5], "higher") == "open"
    assert decide([-3.0, -2.5, -3.5], "higher") == "fails"
    assert decide([-0.5, 0.2, -0.1], "no higher") == "holds"      # within the 1-point margin
    assert decide([4.0, 5.0, 4.5], "no higher") == "fails"
    assert decide([0.0], "no higher") == "open"                   # one seed: no interval
    runs = []
    for seed, noise in enumerate((0.0, 1.0, -1.0)):
        runs += [record("plain", 8, 30 + noise, 35, seed), record("plain", 32, 45 + noise, 50, seed),
                 record("residual", 8, 28 + noise, 33, seed), record("residual", 32, 25 + noise, 30, seed),
                 record("preact", 32, 24 + noise, 29, seed)]
    table = {(c["claim"], c["over"]): c for c in seed_comparisons(runs)}
    end = table[("degradation", "end")]
    assert end["a"] == "plain-32" and end["b"] == "plain-8" and end["seeds"] == 3
    # The end of a run is the mean of its last 10% of points: 2 of 20 on a line from 90.
    assert abs(end["mean"] - 15.0 * 18.5 / 19) < 1e-9 and end["verdict"] == "holds"
    assert table[("residual learning", "end")]["verdict"] == "holds"
    assert table[("pre-activation", "end")]["b"] == "residual-32"
    assert table[("pre-activation", "end")]["verdict"] == "holds"
    assert table[("degradation", "run")]["verdict"] == "holds"
    assert ("residual learning", "run") not in table  # a deeper net may start slower
    text = render_markdown(summarize(runs))
    assert "| degradation | plain-32 | plain-8 | higher | train, end of run | 3 | +14.61 |" in text


def test_a_sweep_of_one_depth_still_tests_the_claims_between_nets_of_that_depth():
    from orchestrator.claims import seed_comparisons

    runs = [r for seed, noise in enumerate((0.0, 0.5, -0.5))
            for r in (record("residual", 32, 4 + noise, 4, seed),
                      record("preact", 32, 4.2 + noise, 3.8, seed))]
    claims = {(c["claim"], c["metric"]) for c in seed_comparisons(runs)}
    # training error (deepest against deepest) and the validation claim at each depth; no
    # deep-against-shallow claim without a second depth
    assert claims == {("pre-activation", "train"), ("full pre-activation beats the original", "val")}


def test_mean_curve_is_taken_at_the_steps_every_seed_logged():
    from orchestrator.figures import mean_curve

    a = RunRecord("plain", 8, 0, history={"train/error_top1": [(10, 50.0), (20, 40.0), (30, 30.0)]})
    b = RunRecord("plain", 8, 1, history={"train/error_top1": [(10, 60.0), (20, 20.0)]})
    assert mean_curve([a, b], "train/error_top1") == ([10, 20], [55.0, 30.0], [50.0, 20.0], [60.0, 40.0])
    assert mean_curve([a], "val/error_top1") == ([], [], [], [])


# ---------------------------------------------------------------- [P2]'s ablations

def variant_record(arch, depth, val_end, seed, variant="", net_variant=None, train_end=None):
    r = record(arch, depth, val_end - 2 if train_end is None else train_end, val_end, seed)
    r.variant, r.net_variant = variant, variant if net_variant is None else net_variant
    r.shortcut = "A"
    return r


def unit_sweep():
    """Table 2's five units at 110 layers over five seeds, (e) best, (b) worst."""
    offsets = {"residual": 7.0, "bn_after_add": 9.0, "relu_before_add": 8.5,
               "relu_preact": 7.1, "preact": 6.0}
    return [variant_record(arch, 110, base + 0.1 * seed * (-1) ** seed, seed)
            for arch, base in offsets.items() for seed in range(5)]


def test_the_unit_ablation_is_laid_out_as_p2_table_2_with_its_protocol():
    summary = summarize(unit_sweep(), "cifar10")
    rows = {r["arch"]: r for r in summary["rows"]}
    # [P2] reports the median of 5: ours is taken the same way, and says so.
    assert rows["preact"]["statistic"] == "median of 5"
    assert rows["preact"]["paper_val_error_top1"] == 6.37
    assert rows["preact"]["paper_source"] == "[P2] Table 2, median of 5"
    assert abs(rows["preact"]["val_error_top1_as_paper"] - 6.0) < 0.25
    text = render_markdown(summary)
    assert "## [P2] Table 2 layout: the residual units" in text
    assert "| (d) ReLU-only pre-activation | " in text and "(6.71) |" in text
    claims = {c["claim"]: c for c in summary["comparisons"]}
    assert claims["full pre-activation beats the original"]["verdict"] == "holds"
    assert claims["ReLU-only pre-activation is about as good as the original"]["verdict"] == "holds"
    assert claims["BN after addition is worse than the original"]["verdict"] == "holds"
    assert claims["full pre-activation beats the original"]["metric"] == "val"


def test_the_shortcut_variants_are_laid_out_as_p2_table_1():
    runs = []
    for seed in range(3):
        runs.append(variant_record("residual", 110, 7.0 + 0.1 * seed, seed, "identity", ""))
        runs.append(variant_record("residual", 110, 9.0 + 0.2 * seed, seed,
                                   "exclusive_gating gate_bias=-6"))
        runs.append(variant_record("residual", 110, 60.0 + seed, seed,
                                   "dropout shortcut_dropout=0.5"))
    summary = summarize(runs, "cifar10")
    text = render_markdown(summary)
    assert "## [P2] Table 1 layout: shortcut variants of the original unit" in text
    assert "| 110 | exclusive_gating gate_bias=-6 | 1 - g(x) | g(x) | 9.20 | 8.70 |" in text
    assert "| 110 | dropout shortcut_dropout=0.5 | dropout 0.5 | 1 | 61.00 | fail (>20) |" in text
    claims = {c["claim"]: c for c in summary["comparisons"]}
    gating = claims["exclusive gating (b_g = -6) is worse than identity"]
    assert gating["a"] == "residual-110 [exclusive_gating gate_bias=-6]" and gating["b"] == "residual-110"
    assert gating["verdict"] == "holds" and gating["seeds"] == 3


def test_imagenet_figures_of_another_crop_protocol_are_never_set_beside_a_run():
    single = variant_record("residual", 152, 23.0, 0)
    single.shortcut, single.eval_crops = "B", 1
    row = summarize([single], "imagenet")["rows"][0]
    assert row["paper_val_error_top1"] == 22.16  # fb.resnet.torch's single 224 crop
    notes = render_markdown(summarize([single], "imagenet"))
    assert "21.43 ([P1] Table 3, 10-crop), not comparable" in notes
    assert "21.30 ([P2] Table 5, single 320 crop), not comparable" in notes
    ten = variant_record("residual", 34, 25.5, 0)
    ten.shortcut, ten.eval_crops = "C", 10
    assert summarize([ten], "imagenet")["rows"][0]["paper_val_error_top1"] == 24.19


def test_a_sweep_of_units_and_variants_plots_a_panel_per_group(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from orchestrator.figures import panels

    titles = [title for title, _ in panels(unit_sweep())]
    assert titles == ["units at depth 110"]
    titles = [title for title, _ in panels(DEGRADATION)]
    assert titles == ["plain", "residual (original unit)", "residual (pre-activation)"]
    summary, files = write_report(unit_sweep(), tmp_path, "cifar10")
    assert files[1].stat().st_size > 10_000


def test_layer_responses_are_drawn_per_net_with_depths_overlaid(tmp_path):
    from orchestrator.figures import mean_responses

    runs = []
    for arch, scale in (("plain", 1.0), ("residual", 0.4)):
        for depth in (8, 14):
            n = (depth - 2) + 1
            for seed in (0, 1):
                r = record(arch, depth, 20, 25, seed)
                r.responses = {"layers": [f"l{i}" for i in range(n)],
                               "std": [scale * (1 + i % 3) + seed for i in range(n)]}
                runs.append(r)
    curves = mean_responses(runs)
    assert curves[("residual", 8, "")] == pytest.approx([0.4 * (1 + i % 3) + 0.5 for i in range(7)])
    summary, files = write_report(runs, tmp_path, "synthetic")
    assert files[-1].name == "layer_responses.png" and files[-1].stat().st_size > 10_000
    assert {(e["arch"], e["depth"]) for e in summary["layer_responses"]} == {
        ("plain", 8), ("plain", 14), ("residual", 8), ("residual", 14)}


def test_one_seed_gives_observations_and_several_give_worded_verdicts_from_intervals():
    one = render_markdown(summarize(DEGRADATION))
    verdicts = one.split("## Verdicts", 1)[1].split("## Observations", 1)[0]
    assert "- none: no claim of the papers has two paired seeds" in verdicts
    assert "degradation" not in verdicts
    assert "(one seed: observations, not verdicts)" in one
    runs = []
    for seed, noise in enumerate((0.0, 1.0, -1.0)):
        runs += [record("plain", 8, 30 + noise, 35, seed), record("plain", 32, 45 + noise, 50, seed)]
    summary = summarize(runs)
    (end, whole) = summary["verdicts"]
    assert end.startswith("degradation (plain-32 vs plain-8, higher): holds: +14.61 [")
    assert end.endswith("points of training error at the end, 3 seeds")
    open_claim = summarize([record("plain", 8, 30 + n, 35, s) for s, n in enumerate((0, 3, -3))]
                           + [record("plain", 32, 30 + n, 50, s) for s, n in enumerate((1, -2, 2))])
    assert "is open" in open_claim["verdicts"][0]


def test_a_verdict_outside_the_papers_depths_says_it_tests_whether_the_claim_carries_over():
    runs = []
    for seed, noise in enumerate((0.0, 1.0, -1.0)):
        runs += [record("residual", 32, 10 + noise, 8, seed), record("preact", 32, 12 + noise, 9, seed),
                 record("residual", 8, 14 + noise, 12, seed)]
    verdicts = summarize(runs)["verdicts"]
    (pre,) = [v for v in verdicts if v.startswith("pre-activation (")]
    assert pre.endswith("(the paper makes this claim at 1001 layers: here it is tested at 32, "
                        "whether it carries over)")
    (res,) = [v for v in verdicts if v.startswith("residual learning")]
    assert "carries over" not in res  # [P1]'s depth claims hold at any depth
