"""Learning-rate schedules: pure functions of the step (and, for plateaus, of the val history).

- ``step_lr``: the papers' step decay, optionally after a warm-up: either [P1]/[P2]'s constant
  0.01 for the first iterations of CIFAR runs, or the linear ramp of Goyal et al. (2017) that
  makes large-batch training (``lr`` scaled linearly with the global batch) stable.
- ``plateau_drops``: [P1] 3.4's "divided by 10 when the error plateaus", as a count of plateaus
  found in the validation history, so the schedule can be recomputed from a checkpoint.
"""

from __future__ import annotations

import bisect


def milestone_steps(milestones: tuple[float, ...], total_steps: int) -> tuple[int, ...]:
    """Fractions of the run -> the steps at which the learning rate drops."""
    return tuple(round(m * total_steps) for m in milestones)


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr grows with the global batch."""
    return base_lr * global_batch / reference_batch


def step_lr(step: int, *, base_lr: float, milestones: tuple[int, ...], gamma: float = 0.1,
            warmup_steps: int = 0, warmup_lr: float = 0.01, warmup: str = "constant",
            drops: int = 0) -> float:
    """The learning rate at ``step``.

    ``warmup="constant"``: ``warmup_lr`` for ``warmup_steps`` steps ([P1] 4.2's ResNet-110,
    [P2]'s CIFAR runs). ``warmup="linear"``: from ``warmup_lr`` up to ``base_lr`` over
    ``warmup_steps`` steps (large-batch training). Afterwards ``base_lr`` times ``gamma`` to the
    power of the milestones passed plus ``drops`` (plateaus detected so far).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        if warmup == "linear":
            return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
        return warmup_lr
    return base_lr * gamma ** (bisect.bisect_right(milestones, step) + drops)


def plateau_drops(val_errors: list[float], *, patience: int = 5, threshold: float = 0.1,
                  max_drops: int = 3) -> int:
    """How many times the lr has been divided, replaying the validation history.

    A plateau: ``patience`` evaluations in a row without improving on the best error since the
    last drop by more than ``threshold`` (percentage points). After a drop the count restarts.
    """
    drops, best, waited = 0, float("inf"), 0
    for err in val_errors:
        if err < best - threshold:
            best, waited = err, 0
        else:
            waited += 1
            if waited >= patience and drops < max_drops:
                drops, best, waited = drops + 1, err, 0
    return drops
