import json

from orchestrator.report import RunRecord, render_markdown, summarize, verdicts, write_report


def curve(start, end, n=20):
    return [(i * 10, start + (end - start) * i / (n - 1)) for i in range(n)]


def record(arch, depth, train_end, val_end, seed=0):
    return RunRecord(arch, depth, seed, history={
        "train/error_top1": curve(90, train_end), "val/error_top1": curve(90, val_end, 4),
        "val/error_top5": curve(50, val_end / 3, 4)})


DEGRADATION = [record("plain", 8, 30, 35), record("plain", 20, 40, 45),
               record("residual", 8, 28, 33), record("residual", 20, 20, 26),
               record("preact", 20, 18, 24)]


def test_verdicts_state_the_papers_findings_with_numbers():
    summary = summarize(DEGRADATION)
    text = "\n".join(summary["verdicts"])
    assert "degradation: plain-20 trains and validates worse than plain-8" in text
    assert "residual: deeper is better" in text
    assert "pre-activation vs original at depth 20: pre-activation is better" in text
    assert "residual vs plain at depth 20: residual is better (val error 26.00% vs 45.00%)" in text


def test_no_degradation_is_reported_as_such():
    rows = summarize([record("plain", 8, 40, 45), record("plain", 20, 30, 35)])["rows"]
    assert verdicts(rows)[0].startswith("no degradation: plain-20 trains and validates at least as well")


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
    assert json.loads(files[2].read_text())["verdicts"] == summary["verdicts"]


def test_interval_and_seeds_needed_against_hand_computed_values():
    from orchestrator.report import interval, seeds_needed

    # mean 2, sd 1 over 3 seeds; t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    lo, hi = interval([1.0, 2.0, 3.0])
    assert abs(lo - (2 - 2.4841)) < 1e-3 and abs(hi - (2 + 2.4841)) < 1e-3
    assert interval([5.0]) is None
    # sd 1: half-widths 8.98 (n=2), 2.48 (3), 1.59 (4), 1.24 (5): below 1.5 from n = 5
    assert seeds_needed([1.0, 2.0, 3.0], 1.5) == 5
    assert seeds_needed([1.0, 2.0, 3.0], 0.0) is None


def test_claims_are_decided_from_paired_seeds():
    from orchestrator.report import decide, seed_comparisons

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
    assert "| degradation | plain-32 | plain-8 | higher | end of run | 3 | +14.61 |" in text


def test_mean_curve_is_taken_at_the_steps_every_seed_logged():
    from orchestrator.report import mean_curve

    a = RunRecord("plain", 8, 0, history={"train/error_top1": [(10, 50.0), (20, 40.0), (30, 30.0)]})
    b = RunRecord("plain", 8, 1, history={"train/error_top1": [(10, 60.0), (20, 20.0)]})
    assert mean_curve([a, b], "train/error_top1") == ([10, 20], [55.0, 30.0], [50.0, 20.0], [60.0, 40.0])
    assert mean_curve([a], "val/error_top1") == ([], [], [], [])
