"""A Gaussian diffusion as a Pyro sub-program: the building block of every diffusion hierarchy.

:class:`DiffusionChain` writes the directed graphical model of a (discrete- or continuous-time)
variational diffusion over a variable y — observed data or a latent of a user's hierarchy:

* model:  z_T ∼ N(0, I),  z_{i−1} ∼ p(z_{i−1} | z_i) = q(z_{i−1} | z_i, x = x̂θ(z_i; γ_i)),  y ∼ p(y | z_0)
* guide:  z_T ∼ q(z_1 | y),  z_{i−1} ∼ q(z_{i−1} | z_i, y)   (the fixed top-down forward posterior)

with ONE shared denoiser x̂θ for all levels (De Sousa Ribeiro & Glocker, §2.4 and Fig. 5).
Under stock Pyro ELBOs (``Trace_ELBO``, ``TraceMeanField_ELBO``) these are ordinary sample sites.
Under :class:`hlvm.DiffusionELBO` the chain *collapses*: its T latent sites vanish and one
``pyro.factor`` adds the analytic bound

    log p(y) ≥ E_q[log p(y | z_0)] − KL(q(z_1|y) ‖ N(0, I)) − L_T(y)

(Kingma et al. 2021, eqs. 11–17), estimated with one batched denoiser call whatever T is.
"""

from __future__ import annotations

import contextvars
import itertools
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..diffusion.gaussian import alpha_sigma, prior_kl, q_zs_given_zt_x, q_zt_given_x
from .likelihoods import GaussianLikelihood, Likelihood

__all__ = ["DiffusionChain", "analytic_context", "active_analytic", "gaussian_decoder"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("hlvm_analytic_diffusion", default=None)


@contextmanager
def analytic_context(estimator):
    """While active, every :class:`DiffusionChain` collapses into ``estimator``'s analytic bound."""
    token = _ACTIVE.set(estimator)
    try:
        yield estimator
    finally:
        _ACTIVE.reset(token)


def active_analytic():
    """The estimator collapsing diffusion chains right now, or None."""
    return _ACTIVE.get()


class DiffusionChain(nn.Module):
    """A variational diffusion over ``decoder``'s variable, usable inside any Pyro model/guide.

    Args:
        denoiser: the shared x̂θ(z_t; γ_t) (a :class:`~hlvm.denoiser.Denoiser` or anything with
            ``eps_hat(z, γ, dγ)``/``__call__(z, γ)``).
        schedule: a :class:`~hlvm.schedules.NoiseSchedule`.
        decoder: a :class:`~hlvm.likelihoods.Likelihood` giving p(y | z_0) via ``from_z0``.
        T: number of discrete steps, or None for continuous time.
        name: prefix of the latent sites (``{name}_{i}``, i = T..0).
        trace_steps: for continuous time, the number of steps the *Pyro program* uses under
            stock ELBOs and for rendering (the continuous model admits any discretization).

    .. warning:: In continuous time the stock-Pyro program is the ``trace_steps``-step
        discretization of the same model: a valid but looser ELBO than the continuous L_∞
        that :class:`~hlvm.DiffusionELBO` estimates.
    """

    def __init__(self, denoiser: nn.Module, schedule: nn.Module, decoder: Likelihood, T: int | None = None,
                 name: str = "z", trace_steps: int = 4):
        super().__init__()
        if T is not None and (not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be a positive integer or None (continuous time), got {T!r}")
        if trace_steps < 1:
            raise ValueError(f"trace_steps must be >= 1, got {trace_steps}")
        self.denoiser, self.schedule, self.decoder = denoiser, schedule, decoder
        self.T, self.name, self.trace_steps = T, name, trace_steps

    # ----------------------------------------------------------------- helpers
    @property
    def steps(self) -> int:
        """Steps of the Pyro program: T, or ``trace_steps`` in continuous time."""
        return self.T if self.T is not None else self.trace_steps

    @property
    def event_shape(self):
        return self.decoder.event_shape

    def site_names(self, steps: int | None = None):
        """Latent site names from the top (noisiest) down: ``z_T, …, z_0``."""
        steps = steps or self.steps
        return [f"{self.name}_{i}" for i in range(steps, -1, -1)]

    def gammas(self, steps: int, like: torch.Tensor) -> torch.Tensor:
        """γ(i/steps) for i = 0..steps, shape (steps + 1,)."""
        t = torch.arange(steps + 1, device=like.device, dtype=like.dtype) / steps
        return self.schedule.gamma(t)

    def _ref(self) -> torch.Tensor:
        """A tensor with the chain's dtype and device (its first parameter or buffer)."""
        for m in (self.denoiser, self.schedule):
            if isinstance(m, nn.Module):
                for t in itertools.chain(m.parameters(), m.buffers()):
                    return t
        return torch.zeros(())

    def _std_normal(self, batch: int, like: torch.Tensor):
        shape = (batch,) + self.event_shape
        zeros = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(len(self.event_shape))

    # ----------------------------------------------------------------- the Pyro program
    def model(self, y_name: str, y: torch.Tensor | None = None, batch_size: int | None = None):
        """The generative chain and p(y | z_0); observes ``y`` when given. Returns y."""
        estimator = active_analytic()
        if estimator is not None:
            return self._model_collapsed(estimator, y_name, y, batch_size)
        if y is not None:
            self.decoder.check(y)
            batch_size = y.shape[0]
        if batch_size is None:
            raise ValueError("DiffusionChain.model needs y or batch_size")
        ref = self._ref() if y is None else y
        ref = ref if torch.is_floating_point(ref) else ref.float()
        steps, e = self.steps, len(self.event_shape)
        g = self.gammas(steps, ref)
        z = pyro.sample(f"{self.name}_{steps}", self._std_normal(batch_size, ref))
        for i in range(steps, 0, -1):
            x_hat = self.denoiser(z, g[i])
            z = pyro.sample(f"{self.name}_{i - 1}", q_zs_given_zt_x(z, x_hat, g[i - 1], g[i]).to_event(e))
        obs = None if y is None else self.decoder.observe(y)
        return pyro.sample(y_name, self.decoder.from_z0(z, g[0]), obs=obs)

    def guide(self, y: torch.Tensor):
        """The fixed top-down posterior q(z_T | y) ∏ q(z_{i−1} | z_i, y) (nothing when collapsed)."""
        if active_analytic() is not None:
            return None
        y_ = self.decoder.to_model_space(y)
        steps, e = self.steps, len(self.event_shape)
        g = self.gammas(steps, y_)
        z = pyro.sample(f"{self.name}_{steps}", q_zt_given_x(y_, g[steps]).to_event(e))
        for i in range(steps, 0, -1):
            z = pyro.sample(f"{self.name}_{i - 1}", q_zs_given_zt_x(z, y_, g[i - 1], g[i]).to_event(e))
        return z

    def _model_collapsed(self, estimator, y_name, y, batch_size):
        if y is None:
            # a latent y: its value is replayed from the guide; the factor below scores it
            shape = (batch_size,) if batch_size is not None else ()
            y = pyro.sample(y_name, dist.ImproperUniform(dist.constraints.real, torch.Size(shape), torch.Size(self.event_shape)))
        else:
            self.decoder.check(y)
            pyro.sample(y_name, dist.ImproperUniform(dist.constraints.real, y.shape[:1], torch.Size(self.event_shape)), obs=y)
        terms = estimator.chain_terms(self, y)
        pyro.factor(f"{self.name}_bound", -terms["loss"])
        return y

    # ----------------------------------------------------------------- the analytic bound
    def reconstruction(self, y: torch.Tensor, generator=None) -> torch.Tensor:
        """−E_{q(z_0|y)} log p(y | z_0), one reparameterized sample, per example."""
        y_ = self.decoder.to_model_space(y)
        g0 = self.schedule.gamma(torch.zeros((), dtype=y_.dtype, device=y_.device))
        a0, s0 = alpha_sigma(g0)
        z0 = a0 * y_ + s0 * torch.randn(y_.shape, dtype=y_.dtype, device=y_.device, generator=generator)
        return -self.decoder.from_z0(z0, g0).log_prob(self.decoder.observe(y))

    def prior(self, y: torch.Tensor) -> torch.Tensor:
        """KL(q(z_1 | y) ‖ N(0, I)) per example."""
        y_ = self.decoder.to_model_space(y)
        g1 = self.schedule.gamma(torch.ones((), dtype=y_.dtype, device=y_.device))
        return prior_kl(y_, g1, event_dims=len(self.event_shape))

    def diffusion_terms(self, y: torch.Tensor, t: torch.Tensor, weighting=None, generator=None):
        """Per-draw diffusion terms at times t (one batched denoiser call).

        ``y`` is (N, ...) data and ``t`` is (N,) times (t = i/T in discrete time).  Returns the
        unweighted terms (N,): ½ T expm1(γ_t − γ_s) ‖ε − ε̂‖² (discrete, VDM eq. 13 scaled so
        that its mean over i is L_T) or ½ γ'(t) ‖ε − ε̂‖² (continuous, eq. 17); and the same with
        the weighting w(λ_t) applied (identical when ``weighting`` is None).
        """
        y_ = self.decoder.to_model_space(y)
        e = len(self.event_shape)
        g_t = self.schedule.gamma(t)  # (N,)
        dg = self.schedule.dgamma_dt(t) if (self.T is None or getattr(self.denoiser, "parameterization", "") == "flow") else None
        a_t, s_t = alpha_sigma(g_t.reshape(g_t.shape + (1,) * e))  # (N, 1, ..., 1)
        eps = torch.randn(y_.shape, dtype=y_.dtype, device=y_.device, generator=generator)
        z_t = a_t * y_ + s_t * eps
        eps_hat = self.denoiser.eps_hat(z_t, g_t, dg)
        err = (eps - eps_hat).pow(2).flatten(1).sum(-1)  # (N, ...) -> (N,)
        if self.T is None:
            term = 0.5 * dg * err
        else:
            g_s = self.schedule.gamma(t - 1.0 / self.T)
            term = 0.5 * self.T * torch.expm1(g_t - g_s) * err
        weighted = term if weighting is None else weighting(-g_t) * term
        return term, weighted

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, generator=None, return_mean: bool = False, like=None):
        """Ancestral sampling z_1 ∼ N(0, I), z_s ∼ p(z_s | z_t) on a ``steps`` grid, y ∼ p(y | z_0).

        ``steps`` defaults to T (continuous time: 1000); a continuous-time model may use any
        number, and a discrete model may be sampled on a coarser grid of the same schedule.
        """
        steps = steps or (self.T if self.T is not None else 1000)
        ref = like if like is not None else self._ref()
        ref = ref if torch.is_floating_point(ref) else ref.float()
        g = self.gammas(steps, ref)
        z = torch.randn((n,) + self.event_shape, dtype=ref.dtype, device=ref.device, generator=generator)
        for i in range(steps, 0, -1):
            p = q_zs_given_zt_x(z, self.denoiser(z, g[i]), g[i - 1], g[i])
            z = p.loc + p.scale * torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        d = self.decoder.from_z0(z, g[0])
        return self.decoder.mean(d) if return_mean else d.sample()

    @torch.no_grad()
    def reconstruct(self, y: torch.Tensor, t: float = 0.3, steps: int | None = None, generator=None):
        """Noise y to level t with q(z_t | y), then run the generative chain back to p(y | z_0)'s mean."""
        steps = steps or (self.T if self.T is not None else 1000)
        y_ = self.decoder.to_model_space(y)
        g = self.gammas(steps, y_)
        i0 = max(1, round(t * steps))
        q = q_zt_given_x(y_, g[i0])
        z = q.loc + q.scale * torch.randn(y_.shape, dtype=y_.dtype, device=y_.device, generator=generator)
        for i in range(i0, 0, -1):
            p = q_zs_given_zt_x(z, self.denoiser(z, g[i]), g[i - 1], g[i])
            z = p.loc + p.scale * torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        return self.decoder.mean(self.decoder.from_z0(z, g[0]))

    @torch.no_grad()
    def langevin_sample(self, n: int, steps: int = 100, corrector_steps: int = 1, snr: float = 0.16,
                        generator=None, return_mean: bool = False, like=None):
        """Annealed Langevin dynamics from the score ŝθ = −ε̂θ/σ (Song & Ermon 2019), as a
        predictor–corrector sampler (Song et al. 2021, Alg. 5): at each level an ancestral
        predictor step, then ``corrector_steps`` Langevin steps z ← z + η ŝ + √(2η) ξ with
        η = 2 (snr · mean‖ξ‖ / mean‖ŝ‖)², the norms averaged over the batch.

        .. warning:: The step size is shared by the batch, as in the reference implementation of
            Song et al. (2021).  A per-example η is unstable in low dimension: where ‖ŝ‖ is small
            (near a mode) it becomes huge and the chain over-disperses.
        """
        ref = like if like is not None else self._ref()
        ref = ref if torch.is_floating_point(ref) else ref.float()
        g = self.gammas(steps, ref)
        shape = (n,) + self.event_shape
        z = torch.randn(shape, dtype=ref.dtype, device=ref.device, generator=generator)

        def norm(v):  # mean over the batch of the per-example Euclidean norm
            return v.flatten(1).norm(dim=-1).mean()

        for i in range(steps, -1, -1):
            if i < steps:  # predictor: ancestral step from level i+1 to i
                p = q_zs_given_zt_x(z, self.denoiser(z, g[i + 1]), g[i], g[i + 1])
                z = p.loc + p.scale * torch.randn(shape, dtype=z.dtype, device=z.device, generator=generator)
            for _ in range(corrector_steps):
                score = self.denoiser.score(z, g[i])
                xi = torch.randn(shape, dtype=z.dtype, device=z.device, generator=generator)
                eta = 2 * (snr * norm(xi) / norm(score).clamp_min(1e-12)) ** 2
                z = z + eta * score + (2 * eta).sqrt() * xi
        d = self.decoder.from_z0(z, g[0])
        return self.decoder.mean(d) if return_mean else d.sample()


def gaussian_decoder(event_shape) -> GaussianLikelihood:
    """p(y | z_0) = N(y; z_0/α_0, σ_0²/α_0²) for a continuous latent y (a diffusion prior)."""
    return GaussianLikelihood(event_shape)

