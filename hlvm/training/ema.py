"""An exponential moving average of a model's weights, evaluated in place of the live weights.

θ̄ ← d · θ̄ + (1 − d) · θ after every update (Polyak & Juditsky 1992, *Acceleration of stochastic
approximation by averaging*; the decay form used by e.g. Kingma et al. 2021, VDM).  Training
updates the live weights; evaluation and samples read the average.  :class:`EMA` is the one owner
of the average: :meth:`EMA.applied` puts it into the model for the length of a ``with`` block and
puts the live weights back afterwards, exactly.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["EMA"]


class EMA:
    """The average θ̄ of a module's state (floating-point entries averaged, the others copied).

    :param dict shadow: θ̄, a state dict of the module (the checkpoint's ``"ema"`` entry).
    :param float decay: d ∈ [0, 1).
    """

    def __init__(self, shadow: dict, decay: float):
        self.shadow, self.decay = shadow, decay
        self._depth = 0  # open applied() blocks: only the outermost swaps

    @classmethod
    def of(cls, module: torch.nn.Module, decay: float) -> "EMA":
        """An average that starts at the module's current state."""
        return cls({k: v.detach().clone() for k, v in module.state_dict().items()}, decay)

    def decay_at(self, step: int | None) -> float:
        """The decay of the update after ``step`` updates of the module: d, or with ``step`` given
        min(d, (1 + step)/(10 + step)) — the warm-up of TensorFlow's ``ExponentialMovingAverage``
        (``num_updates``), so that the average forgets the initial weights within a few hundred
        steps instead of 1/(1 − d) (with d = 0.999 and no warm-up, 13% of the average is still the
        initialisation after 2,000 steps)."""
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int | None = None) -> None:
        """θ̄ ← d · θ̄ + (1 − d) · θ after an update of the module, d = :meth:`decay_at` (``step``)."""
        d = self.decay_at(step)
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def swap(self, module: torch.nn.Module) -> None:
        """Exchange the module's weights and θ̄ (a second call restores both)."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        self.shadow = live

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        """θ̄ in the module inside the block; the live weights (and θ̄) as they were afterwards.  A
        block inside another leaves θ̄ in place (it does not swap the live weights back in)."""
        outermost = self._depth == 0
        if outermost:
            self.swap(module)
        self._depth += 1
        try:
            yield module
        finally:
            self._depth -= 1
            if outermost:
                self.swap(module)
