"""Each net at its own learning rate: the choice, the runs it takes, the record it leaves."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.spec import SpecError, load_spec
from orchestrator.tuning import choose_lr, render_tuning, tuning_errors

REPO = Path(__file__).resolve().parents[2]


def test_the_choice_is_the_lowest_mean_error_and_a_tie_goes_to_the_smaller_rate():
    errors = {
        # The original unit is best at 0.05; pre-activation at 0.2 (a larger step suits it).
        "residual-32": {0.02: [20.0, 22.0], 0.05: [15.0, 17.0], 0.2: [30.0, 18.0]},
        "preact-32": {0.02: [25.0, 25.0], 0.05: [19.0, 21.0], 0.2: [14.0, 16.0]},
        "plain-8": {0.05: [10.0], 0.1: [10.0]},  # a tie
        "plain-32": {0.05: [], 0.1: [40.0]},  # a candidate whose run failed
    }
    assert choose_lr(errors) == {"residual-32": 0.05, "preact-32": 0.2, "plain-8": 0.05,
                                 "plain-32": 0.1}
    with pytest.raises(ValueError, match="no tuning run of preact-56 finished"):
        choose_lr({"preact-56": {0.05: [], 0.1: []}})
    table = "\n".join(render_tuning(errors, choose_lr(errors), "holdout"))
    assert "| preact-32 | 25.00 | 20.00 | - | **15.00** | 0.2 |" in table
    # preact-32's best is the largest rate tried, plain-8's (a tie) the smallest; residual-32's
    # is inside the range, and plain-32's 0.1 is its only finished candidate: no range at all
    assert "- preact-32: the best rate is the largest tried (0.2); its best may lie above" in table
    assert "- plain-8: the best rate is the smallest tried (0.05); its best may lie below" in table
    assert "residual-32: the best" not in table and "plain-32: the best" not in table


def spec(*extra):
    return load_spec(REPO / "configs" / "cpu_degradation.yaml", [
        "grid.arch=[residual,preact]", "grid.depth=[32]", "grid.exclude=[]", "grid.seed=[0,1]",
        "tune={lr: [0.02, 0.05], split: holdout, seeds: [100, 101], train: {epochs: 4}}", *extra])


def test_the_tune_stage_runs_every_net_at_every_rate_on_the_held_out_split():
    s = spec()
    runs = s.tune_runs()
    assert [c.run_name for c in runs][:4] == ["tune-residual-32-lr0.02-s100",
                                              "tune-residual-32-lr0.02-s101",
                                              "tune-residual-32-lr0.05-s100",
                                              "tune-residual-32-lr0.05-s101"]
    assert len(runs) == 8 and {c.eval_split for c in runs} == {"holdout"}
    assert {c.epochs for c in runs} == {4} and {c.seed for c in runs} == {100, 101}
    assert {c.eval_split for c in s.runs()} == {"val"}  # the grid is evaluated elsewhere
    assert s.to_dict()["tune"]["lr"] == [0.02, 0.05]


@pytest.mark.parametrize("override,match", [
    ("tune.split=val", "the split the runs are evaluated on"),
    ("tune.lr=[]", "tune.lr must list positive learning rates"),
    ("tune.lr=[0.1, -1]", "tune.lr must list positive learning rates"),
    ("tune.train={lr: 0.3}", r"unknown key\(s\) \['lr'\] in tune.train"),
    ("tune.seed=[1]", r"unknown key\(s\) \['seed'\] in tune"),
])
def test_bad_tune_sections_are_refused(override, match):
    with pytest.raises(SpecError, match=match):
        spec(override)


def test_the_record_is_read_back_from_the_tune_runs():
    def run(arch, lr, err, status="FINISHED"):
        return SimpleNamespace(
            data=SimpleNamespace(params={"arch": arch, "depth": "32", "lr": str(lr), "variant": ""},
                                 metrics={"val/error_top1": err} if err is not None else {}),
            info=SimpleNamespace(status=status))

    tracker = SimpleNamespace(children=lambda role: [
        run("residual", 0.05, 12.0), run("residual", 0.05, 14.0), run("residual", 0.1, 11.0),
        run("residual", 0.1, 99.0, "FAILED"), run("preact", 0.05, None, "FAILED")] if role == "tune" else [])
    assert tuning_errors(tracker) == {"residual-32": {0.05: [12.0, 14.0], 0.1: [11.0]},
                                      "preact-32": {0.05: []}}
