import pytest

from training.schedule import milestone_steps, step_lr


def test_step_decay_at_the_milestones():
    ms = (32000, 48000)  # [P1] CIFAR
    lr = lambda s: step_lr(s, base_lr=0.1, milestones=ms)  # noqa: E731
    assert lr(0) == 0.1 and lr(31999) == 0.1
    assert lr(32000) == pytest.approx(0.01) and lr(47999) == pytest.approx(0.01)
    assert lr(48000) == pytest.approx(0.001) and lr(64000) == pytest.approx(0.001)


def test_warmup_is_constant_then_base():
    lr = lambda s: step_lr(s, base_lr=0.1, milestones=(100,), warmup_steps=10, warmup_lr=0.01)  # noqa: E731
    assert [lr(s) for s in (0, 9)] == [0.01, 0.01]
    assert lr(10) == 0.1 and lr(100) == pytest.approx(0.01)


def test_milestone_fractions_to_steps():
    assert milestone_steps((0.5, 0.75), 64000) == (32000, 48000)
    assert milestone_steps((), 10) == ()


def test_negative_step_is_an_error():
    with pytest.raises(ValueError):
        step_lr(-1, base_lr=0.1, milestones=())


def test_linear_warmup_ramps_to_the_base_lr():
    lr = lambda s: step_lr(s, base_lr=0.4, milestones=(), warmup_steps=4, warmup_lr=0.0, warmup="linear")  # noqa: E731
    assert [lr(s) for s in range(5)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_linear_scaling_rule():
    from training.schedule import scaled_lr

    assert scaled_lr(0.1, 8192, 256) == pytest.approx(3.2)  # Goyal et al.: 8k batch, lr 3.2


def test_plateau_drops_replay_the_validation_history():
    from training.schedule import plateau_drops

    assert plateau_drops([50, 40, 30], patience=2) == 0
    assert plateau_drops([50, 40, 40, 40], patience=2) == 1          # two evaluations stalled
    assert plateau_drops([50, 40, 40, 40, 39.95, 39.95], patience=2) == 2  # below threshold
    assert plateau_drops([50] * 20, patience=2, max_drops=3) == 3
    assert step_lr(0, base_lr=0.1, milestones=(), drops=2) == pytest.approx(0.001)


def test_recipes_fill_the_papers_numbers_and_can_be_overridden():
    from orchestrator.spec import spec_from_dict

    spec = spec_from_dict({"grid": {"arch": ["residual"], "depth": [110]},
                           "train": {"recipe": "cifar_paper", "data_url": "/tmp/x", "epochs": 1}})
    cfg = spec.runs()[0]
    assert (cfg.max_steps, cfg.warmup_steps, cfg.warmup_lr, cfg.global_batch_size) == (64000, 400, 0.01, 128)
    assert cfg.lr_milestones == (0.5, 0.75) and cfg.recipe == "cifar_paper"
    imagenet = spec_from_dict({"grid": {"arch": ["plain"], "depth": [34]},
                               "train": {"recipe": "imagenet_paper", "data_url": "/tmp/x"}}).runs()[0]
    assert imagenet.lr_schedule == "plateau" and imagenet.eval_crops == 10 and imagenet.augment == "imagenet_paper"
