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
