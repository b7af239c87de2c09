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
