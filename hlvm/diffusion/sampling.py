"""Samplers of a Gaussian diffusion, one function each, all built on the one transition
p(z_s | z_t) = q(z_s | z_t, x = x̂θ(z_t; γ_t)) (:func:`~hlvm.diffusion.gaussian.p_zs_given_zt`).

* :func:`ancestral_sample` — z_1 ∼ N(0, I), z_s ∼ p(z_s | z_t) on a grid of any number of steps,
  y ∼ p(y | z_0) (Ho et al. 2020, Alg. 2; Kingma et al. 2021, App. A.4);
* :func:`noise_and_denoise` — noise y to level t with q(z_t | y), then run the chain back
  (a "reconstruction" of the data through the hierarchy);
* :func:`langevin_sample` — predictor–corrector annealed Langevin dynamics from the score
  ŝθ = −ε̂θ/σ (Song & Ermon 2019; Song et al. 2021, Alg. 5).

Arguments shared by all: a denoiser (:class:`~hlvm.diffusion.denoiser.XPredictor`), a schedule,
and the likelihood p(y | z_0) (``from_z0``, ``mean``, ``event_shape``).
"""

from __future__ import annotations

import torch

from .gaussian import p_zs_given_zt, q_zt_given_x

__all__ = ["grid", "ancestral_sample", "noise_and_denoise", "langevin_sample"]


def grid(schedule, steps: int, like: torch.Tensor) -> torch.Tensor:
    """γ(i/steps) for i = 0..steps, shape (steps + 1,)."""
    t = torch.arange(steps + 1, device=like.device, dtype=like.dtype) / steps
    return schedule.gamma(t)


def _step(denoiser, z, g_s, g_t, generator):
    """One draw z_s ∼ p(z_s | z_t)."""
    p = p_zs_given_zt(denoiser, z, g_s, g_t)
    return p.loc + p.scale * torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)


def _emit(likelihood, z_0, g_0, return_mean):
    d = likelihood.from_z0(z_0, g_0)
    return likelihood.mean(d) if return_mean else d.sample()


@torch.no_grad()
def ancestral_sample(denoiser, schedule, likelihood, n: int, steps: int, like: torch.Tensor, generator=None,
                     return_mean: bool = False) -> torch.Tensor:
    """n draws of y: z_1 ∼ N(0, I), then ``steps`` transitions down to z_0, then p(y | z_0)
    (its mean when ``return_mean``).  ``like`` gives dtype and device."""
    g = grid(schedule, steps, like)
    z = torch.randn((n,) + tuple(likelihood.event_shape), dtype=like.dtype, device=like.device, generator=generator)
    for i in range(steps, 0, -1):
        z = _step(denoiser, z, g[i - 1], g[i], generator)
    return _emit(likelihood, z, g[0], return_mean)


@torch.no_grad()
def noise_and_denoise(denoiser, schedule, likelihood, y: torch.Tensor, t: float = 0.3, steps: int = 1000,
                      generator=None) -> torch.Tensor:
    """z_t ∼ q(z_t | y) at t ≈ ``t`` on a ``steps`` grid, then p(z_s | z_t) down to z_0; the mean of p(y | z_0)."""
    x = likelihood.to_model_space(y)
    g = grid(schedule, steps, x)
    i0 = max(1, round(t * steps))
    q = q_zt_given_x(x, g[i0])
    z = q.loc + q.scale * torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    for i in range(i0, 0, -1):
        z = _step(denoiser, z, g[i - 1], g[i], generator)
    return _emit(likelihood, z, g[0], True)


@torch.no_grad()
def langevin_sample(denoiser, schedule, likelihood, n: int, steps: int, like: torch.Tensor, corrector_steps: int = 1,
                    snr: float = 0.16, generator=None, return_mean: bool = False) -> torch.Tensor:
    """Predictor–corrector sampling: at each level an ancestral predictor step, then
    ``corrector_steps`` Langevin steps z ← z + η ŝ + √(2η) ξ with η = 2 (snr · mean‖ξ‖ / mean‖ŝ‖)²,
    the norms averaged over the batch.

    .. warning:: The step size is shared by the batch, as in the reference implementation of
        Song et al. (2021).  A per-example η is unstable in low dimension: where ‖ŝ‖ is small
        (near a mode) it becomes huge and the chain over-disperses.
    """
    g = grid(schedule, steps, like)
    shape = (n,) + tuple(likelihood.event_shape)
    z = torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)

    def norm(v):  # mean over the batch of the per-example Euclidean norm
        return v.flatten(1).norm(dim=-1).mean()

    for i in range(steps, -1, -1):
        if i < steps:  # predictor: ancestral step from level i+1 to i
            z = _step(denoiser, z, g[i], g[i + 1], generator)
        for _ in range(corrector_steps):
            score = denoiser.score(z, g[i])
            xi = torch.randn(shape, dtype=z.dtype, device=z.device, generator=generator)
            eta = 2 * (snr * norm(xi) / norm(score).clamp_min(1e-12)) ** 2
            z = z + eta * score + (2 * eta).sqrt() * xi
    return _emit(likelihood, z, g[0], return_mean)
