"""The learning rate at each step: constant, or cosine decay after a linear warm-up.

Deep hierarchical VAEs train with a short linear warm-up of the learning rate and a cosine decay
over the run (NVAE: Vahdat & Kautz 2020, §5; VDVAE: Child 2021, App. A; the decay is SGDR's
single cycle, Loshchilov & Hutter 2017, eq. 5).  For a run of ``N`` steps, warm-up ``W`` and base
rate ``η``, the rate of step ``s`` (counted from 0, the update that takes the run from ``s`` to
``s + 1``) is

.. math::

    η_s = η \\min\\Big(1, \\frac{s + 1}{W}\\Big) \\cdot
    \\begin{cases} 1 & \\text{constant} \\\\
    \\tfrac12\\big(1 + \\cos(π \\, \\max(0, s - W) / \\max(1, N - W))\\big) & \\text{cosine} \\end{cases}

The rate is a function of the step alone, so a resumed run takes the same rates as an
uninterrupted one.
"""

from __future__ import annotations

import math

from ..limits import LR_SCHEDULES

__all__ = ["LR_SCHEDULES", "learning_rate"]


def learning_rate(step: int, total: int, lr: float, schedule: str = "constant", warmup: int = 0) -> float:
    """η_s of the module docstring for step ``step`` of a run of ``total`` steps."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {list(LR_SCHEDULES)}")
    rate = lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
    if schedule == "cosine":
        rate *= 0.5 * (1.0 + math.cos(math.pi * max(0, step - warmup) / max(1, total - warmup)))
    return rate
