"""Learning-rate schedules: pure functions of the global step."""

from __future__ import annotations

import bisect


def milestone_steps(milestones: tuple[float, ...], total_steps: int) -> tuple[int, ...]:
    """Fractions of the run -> the steps at which the learning rate drops."""
    return tuple(round(m * total_steps) for m in milestones)


def step_lr(step: int, *, base_lr: float, milestones: tuple[int, ...], gamma: float = 0.1,
            warmup_steps: int = 0, warmup_lr: float = 0.01) -> float:
    """The papers' schedule: ``warmup_lr`` for the first ``warmup_steps`` ([P1] 4.2's ResNet-110,
    [P2] for all CIFAR runs), then ``base_lr`` divided by ``1/gamma`` at each milestone step."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return warmup_lr
    return base_lr * gamma ** bisect.bisect_right(milestones, step)
