"""Noise schedules γ(t) = −log SNR(t) on t ∈ [0, 1]: fixed (:mod:`.fixed`) and learned (:mod:`.learned`).

Every schedule is a small :class:`torch.nn.Module` whose ``forward(t)`` returns γ(t); the
variance-preserving quantities follow from γ alone (VDM convention, Kingma et al. 2021, §3):
σ_t² = sigmoid(γ_t), α_t² = sigmoid(−γ_t), SNR(t) = exp(−γ_t).
"""

from __future__ import annotations

from .fixed import CosineSchedule, DDPMSchedule, LinearSchedule, NoiseSchedule, check_time
from .learned import DensitySchedule, InteriorSchedule, LearnedLinearSchedule, MonotoneNetSchedule

__all__ = [
    "NoiseSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "LearnedLinearSchedule",
    "InteriorSchedule",
    "MonotoneNetSchedule",
    "DensitySchedule",
    "DDPMSchedule",
    "make_schedule",
    "check_time",
]


def make_schedule(name: str, gamma_min: float = -13.3, gamma_max: float = 5.0, **kwargs) -> NoiseSchedule:
    """Build a schedule by name: linear, cosine, learned-linear, learned-net,
    learned-density, ddpm-linear, ddpm-cosine."""
    table = {
        "linear": lambda: LinearSchedule(gamma_min, gamma_max),
        "cosine": lambda: CosineSchedule(gamma_min, gamma_max),
        "learned-linear": lambda: LearnedLinearSchedule(gamma_min, gamma_max),
        "learned-net": lambda: MonotoneNetSchedule(gamma_min, gamma_max, **kwargs),
        "learned-density": lambda: DensitySchedule(gamma_min, gamma_max, **kwargs),
        "ddpm-linear": lambda: DDPMSchedule(kind="linear", **kwargs),
        "ddpm-cosine": lambda: DDPMSchedule(kind="cosine", **kwargs),
    }
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(table)}")
    return table[name]()
