"""KL warm-up: the latent sites of a program scaled by β ∈ [0, 1] during early training.

With every latent site of model and guide scaled by β, the ELBO becomes
E_q[log p(x | z)] − β · KL(q(z | x) ‖ p(z)): a reconstruction-first objective that keeps the upper
layers of a hierarchy from collapsing to the prior before the decoder can use them (Bowman et al.
2016; Sønderby et al. 2016, §2.3: "warm-up").  β = 1 is the ELBO itself; a bound reported with
β < 1 is not one, so evaluation always runs with β = 1.
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

__all__ = ["ScaleLatents", "warmup_beta"]


class ScaleLatents(Messenger):
    """Multiplies the log-density of every unobserved sample site by ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def warmup_beta(step: int, warmup_steps: int, beta_min: float = 0.0) -> float:
    """β rising linearly from ``beta_min`` to 1 over ``warmup_steps`` steps (1 once done or if 0)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return beta_min + (1.0 - beta_min) * step / warmup_steps
