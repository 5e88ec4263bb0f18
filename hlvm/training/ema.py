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
        averaged, live, copied, sources = self._pairs(module)
        if averaged:  # one fused kernel per op over every tensor (torch._foreach_*), not one call per tensor
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, live, alpha=1 - d)
        for target, source in zip(copied, sources):
            target.copy_(source)

    def _pairs(self, module):
        """(θ̄ floating entries, the module's matching tensors, θ̄ other entries, theirs), read from the
        module's state dict once and kept while θ̄ and the module are the same objects.  The module's
        entries are held as its Parameter objects (``keep_vars``), which ``.to()`` and
        ``load_state_dict`` update in place; a buffer the module replaces re-reads them."""
        key = (id(self.shadow), id(module), tuple(id(b) for b in module.buffers()))
        if getattr(self, "_pairs_key", None) != key:
            state = module.state_dict(keep_vars=True)
            floats = [k for k, v in state.items() if v.dtype.is_floating_point]
            others = [k for k, v in state.items() if not v.dtype.is_floating_point]
            self._pairs_cache = ([self.shadow[k] for k in floats], [state[k].detach() for k in floats],
                                 [self.shadow[k] for k in others], [state[k] for k in others])
            self._pairs_key = key
        return self._pairs_cache

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
