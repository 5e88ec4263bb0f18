"""The analytic bound of a Gaussian diffusion over y: VDM's whole loss in one place.

For a diffusion chain with likelihood p(y | z_0) and shared denoiser ε̂θ,

    −log p(y) ≤ L(y) = −E_{q(z_0|y)}[log p(y | z_0)]   (reconstruction)
                     + KL(q(z_1 | y) ‖ N(0, I))        (prior)
                     + L_T(y)                          (diffusion)

    L_T = ½ T · E_{ε, i∼U{1..T}}[expm1(γ_t − γ_s) ‖ε − ε̂θ(z_t; γ_t)‖²],  t = i/T, s = (i−1)/T
    L_∞ = ½ · E_{ε, t∼U(0,1)}[γ'(t) ‖ε − ε̂θ(z_t; γ_t)‖²]

(Kingma, Salimans, Poole & Ho, *Variational Diffusion Models*, 2021, eqs. 11–17).  A weighting
w(λ_t), λ = −γ, gives Kingma & Gao's (2023) weighted loss ½ E[w(λ) γ' ‖ε − ε̂‖²] — an ELBO only for
w ≡ 1.  Every timestep of a batch goes through ONE denoiser call, so the cost does not depend on T.

The pieces, each one function: :func:`diffusion_term` (the term in the paper's symbols, discrete
and continuous time side by side), :func:`weighted_term` (w(λ)), :func:`variance_gradient` (the
variance objective of a learned schedule, a gradient transform: VDM App. I.1), assembled by
:func:`diffusion_loss` at sampled times and by :func:`diffusion_bound` with the prior and
reconstruction terms.

Plain torch: the denoiser is any :class:`~hlvm.diffusion.denoiser.XPredictor`, the likelihood
anything with ``to_model_space``, ``observe``, ``from_z0`` and ``event_shape``
(:mod:`hlvm.programs.likelihoods`).  :class:`hlvm.DiffusionELBO` calls :func:`diffusion_bound`
for each chain of a Pyro program.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gaussian import alpha_sigma, diffusion_kl_eps, pad_gamma, prior_kl
from .schedules import InteriorSchedule
from .timesteps import TimestepSampler

__all__ = ["BoundTerms", "diffusion_term", "weighted_term", "variance_gradient", "diffusion_loss", "diffusion_bound",
           "prior_loss", "reconstruction_loss", "exact_times"]


@dataclass(frozen=True)
class BoundTerms:
    """Per-example terms of −log p(y) ≤ ``loss``, in nats (each (B,)), and the times used.

    ``t`` and ``per_t``: the sampled times and their unweighted terms (one per draw), or, for an
    exact evaluation, the (K, B) steps / per-example node positions in [0, 1) (in γ for continuous
    time) and the batch mean of each node's term.  ``diffusion_var`` (exact evaluation only): an
    estimate of the Monte Carlo variance of each example's diffusion term, from the differences of
    neighbouring strata (a collapsed-strata estimate: conservative, it includes the integrand's
    trend between neighbours).
    """

    reconstruction: torch.Tensor
    prior: torch.Tensor
    diffusion: torch.Tensor
    t: torch.Tensor
    per_t: torch.Tensor
    diffusion_var: torch.Tensor | None = None

    @property
    def loss(self) -> torch.Tensor:
        """reconstruction + prior + diffusion, per example (an upper bound on −log p(y) when w ≡ 1)."""
        return self.reconstruction + self.prior + self.diffusion

    def detach(self) -> "BoundTerms":
        return BoundTerms(*(None if v is None else v.detach() for v in (
            self.reconstruction, self.prior, self.diffusion, self.t, self.per_t, self.diffusion_var)))


def reconstruction_loss(likelihood, schedule, y: torch.Tensor, generator=None) -> torch.Tensor:
    """−log p(y | z_0) at one reparameterized draw z_0 ∼ q(z_0 | y), per example."""
    x = likelihood.to_model_space(y)
    g_0 = schedule.gamma(torch.zeros((), dtype=x.dtype, device=x.device))
    alpha_0, sigma_0 = alpha_sigma(g_0)
    z_0 = alpha_0 * x + sigma_0 * torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return -likelihood.from_z0(z_0, g_0).log_prob(likelihood.observe(y))


def prior_loss(likelihood, schedule, y: torch.Tensor) -> torch.Tensor:
    """KL(q(z_1 | y) ‖ N(0, I)), per example."""
    x = likelihood.to_model_space(y)
    g_1 = schedule.gamma(torch.ones((), dtype=x.dtype, device=x.device))
    return prior_kl(x, g_1, event_dims=len(likelihood.event_shape))


def diffusion_term(eps: torch.Tensor, eps_hat: torch.Tensor, *, T: int | None = None, g_t=None, g_s=None,
                   dg_t=None) -> torch.Tensor:
    """One draw of the diffusion loss per example (N,), from ε and ε̂θ(z_t; γ_t) of shape (N, ...):

    * discrete time (VDM eq. 13, mean over i ∼ U{1..T} gives L_T):  ½ T expm1(γ_t − γ_s) ‖ε − ε̂‖²
    * continuous time (VDM eq. 17, mean over t ∼ U(0, 1) gives L_∞):  ½ γ'(t) ‖ε − ε̂‖²

    ``T=None`` is continuous time (``dg_t`` = γ'(t) needed), else ``g_t``, ``g_s`` = γ(t), γ(t − 1/T).
    """
    if T is None:
        return 0.5 * dg_t * (eps - eps_hat).pow(2).flatten(1).sum(-1)  # ‖ε − ε̂‖²: (N, ...) -> (N,)
    return T * diffusion_kl_eps(eps, eps_hat, g_s, g_t)  # T × the one-step KL in noise space


def weighted_term(term: torch.Tensor, g_t: torch.Tensor, weighting=None) -> torch.Tensor:
    """w(λ_t) · term with λ = −γ_t (Kingma & Gao 2023, eq. 7; :mod:`~hlvm.diffusion.weighting`);
    ``weighting=None`` is w ≡ 1, the ELBO."""
    return term if weighting is None else weighting(-g_t) * term


def variance_gradient(term: torch.Tensor, interior) -> torch.Tensor:
    """The variance objective as a gradient transform: the schedule interior's backward pass × 2L.

    E[L] depends on a schedule only through its endpoints, E[L²] also on its interior η; since
    ∂L²/∂η = 2L ∂L/∂η, the interior minimises the Monte Carlo variance of the continuous-time loss
    when the gradient reaching it is scaled by 2·term, per draw, while the endpoints (and the
    denoiser) keep the ELBO's gradient (Kingma et al. 2021, §5, App. I.1).  ``interior``: the
    tensors frac(t), frac'(t) of :meth:`~hlvm.diffusion.schedules.InteriorSchedule.parts` that
    ``term`` was computed from; each gets a backward hook.  Returns ``term``, its value unchanged.
    """
    scale = 2 * term.detach()  # ∂(L²)/∂L, per draw: (N,)
    for part in interior:
        if part.requires_grad:
            part.register_hook(lambda grad: grad * scale)
    return term


def _levels(schedule, t, T, needs_dg: bool, variance_schedule: bool):
    """(γ_t, γ'(t) or None, the interior tensors the variance objective scales: () unless it is on)."""
    if not variance_schedule:
        return schedule.gamma(t), (schedule.dgamma_dt(t) if needs_dg else None), ()
    if T is not None:
        raise ValueError(f"the variance objective is for continuous time (VDM App. I.1), not T={T}: in discrete "
                         "time the bound itself depends on the schedule's interior")
    if not isinstance(schedule, InteriorSchedule):
        raise ValueError(f"the variance objective trains a schedule's learned interior ('learned-net', 'learned-density'); "
                         f"{type(schedule).__name__} has none (its only parameters, if any, are endpoints, which follow "
                         "the ELBO): use schedule_objective='elbo'")
    g0, gap, frac, dfrac = schedule.parts(t)
    return g0 + gap * frac, gap * dfrac, (frac, dfrac)


def _predict_eps(denoiser, x, g_t, dg_t, generator=None, eps=None):
    """(ε, ε̂θ(z_t; γ_t)) at z_t = α_t x + σ_t ε, ε ∼ N(0, I) unless given; x (N, ...), γ_t (N,)."""
    alpha_t, sigma_t = alpha_sigma(pad_gamma(g_t, x))  # (N, 1, ..., 1)
    if eps is None:
        eps = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    z_t = alpha_t * x + sigma_t * eps
    return eps, denoiser.eps_hat(z_t, g_t, dg_t)


def diffusion_loss(denoiser, schedule, T: int | None, x: torch.Tensor, t: torch.Tensor, weighting=None,
                   generator=None, variance_schedule: bool = False, eps: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffusion term at times t: ``(term, weighted)``, each (N,), for x (N, ...) in model space.

    ``term`` is :func:`diffusion_term` at z_t ∼ q(z_t | x) (ε drawn, or ``eps``), ``weighted`` is
    :func:`weighted_term` (the same tensor when ``weighting`` is None).  ``variance_schedule``
    (continuous time, an :class:`~hlvm.diffusion.schedules.InteriorSchedule`): the schedule's
    interior gets the gradient of Σ term² instead of Σ term (:func:`variance_gradient`); any other
    schedule, or discrete time, is refused with a ValueError.
    """
    needs_dg = T is None or getattr(denoiser, "needs_dgamma", False)
    g_t, dg_t, interior = _levels(schedule, t, T, needs_dg, variance_schedule)  # (N,) each
    eps, eps_hat = _predict_eps(denoiser, x, g_t, dg_t, generator, eps)
    g_s = None if T is None else schedule.gamma(t - 1.0 / T)
    term = variance_gradient(diffusion_term(eps, eps_hat, T=T, g_t=g_t, g_s=g_s, dg_t=dg_t), interior)
    return term, weighted_term(term, g_t, weighting)


def exact_times(T: int | None, nodes: int, like: torch.Tensor, batch: int) -> torch.Tensor:
    """Evaluation nodes, shape (K, batch): all T steps t = i/T for every example, or ``nodes``
    stratified positions (k + u_b)/nodes in [0, 1) with an independent offset u_b ∼ U(0, 1) per
    example, so that the quadrature error of different examples is independent and averages out
    over a test set."""
    if T is not None:
        return (torch.arange(1, T + 1, device=like.device, dtype=like.dtype) / T)[:, None].expand(T, batch)
    u = torch.rand(batch, device=like.device, dtype=like.dtype)
    return (torch.arange(nodes, device=like.device, dtype=like.dtype)[:, None] + u) / nodes  # (nodes, B)


def _exact_diffusion(denoiser, schedule, T, x, nodes, weighting, max_batch):
    """The diffusion term averaged over all T steps, or — continuous time — integrated over γ.

    In continuous time L_∞ = ½ ∫ γ'(t) E‖ε − ε̂‖² dt = ½ ∫_{γ_0}^{γ_1} E‖ε − ε̂(z_γ; γ)‖² dγ: nodes are
    placed uniformly in γ (Kingma et al. 2021, §5: the integral depends on the schedule only
    through its endpoints), so a steep schedule (cosine near its ends) costs no extra variance.
    A denoiser that needs γ'(t) (flow) is integrated in t instead.
    """
    b = x.shape[0]
    pos = exact_times(T, nodes, x, b)  # (K, B)
    in_gamma = T is None and not getattr(denoiser, "needs_dgamma", False)
    if in_gamma:
        g_lo = schedule.gamma(torch.zeros((), dtype=x.dtype, device=x.device))
        g_hi = schedule.gamma(torch.ones((), dtype=x.dtype, device=x.device))
    parts, per_t = [], []
    for pp in pos.split(max(1, max_batch // b)):
        n = pp.shape[0]
        xx = x.repeat((n,) + (1,) * (x.dim() - 1))  # (n·B, ...), node-major
        if in_gamma:
            g = g_lo + (g_hi - g_lo) * pp.reshape(-1)  # (n·B,)
            eps, eps_hat = _predict_eps(denoiser, xx, g, None)
            term = diffusion_term(eps, eps_hat, dg_t=g_hi - g_lo)  # dγ/dγ-position = γ_1 − γ_0
            weighted = weighted_term(term, g, weighting)
        else:
            term, weighted = diffusion_loss(denoiser, schedule, T, xx, pp.reshape(-1), weighting)  # (n, B) -> (n·B,)
        parts.append(weighted.view(n, b))
        per_t.append(term.view(n, b).mean(1).detach())
    values = torch.cat(parts)  # (K, B)
    k = values.shape[0] - values.shape[0] % 2
    diff = (values[0:k:2] - values[1:k:2]).detach()  # neighbouring strata, (K/2, B)
    var = diff.pow(2).sum(0) / max(k, 1) ** 2 if k else torch.full_like(values[0], float("nan"))
    return values.mean(0), pos.detach(), torch.cat(per_t), var


def diffusion_bound(denoiser, schedule, likelihood, T: int | None, y: torch.Tensor, *, sampler=None, num_t: int = 1,
                    exact: bool = False, nodes: int = 1000, weighting=None, max_batch: int = 8192,
                    variance_schedule: bool = False) -> BoundTerms:
    """The per-example bound of y (B, ...) under the chain (denoiser, schedule, likelihood, T).

    Monte Carlo over time: ``num_t`` draws per example from ``sampler(n, device, dtype) → (t, w)``
    (importance weights w; default an antithetic :class:`~hlvm.diffusion.timesteps.TimestepSampler`),
    all in one denoiser call.  ``exact``: the mean over all T steps, or in continuous time ``nodes``
    stratified nodes in γ with per-example offsets (:func:`_exact_diffusion`), in chunks of at
    most ``max_batch`` rows.  ``variance_schedule``: see :func:`diffusion_loss`.

    The bound does not touch the sampler's state: an importance sampler's owner records the drawn
    terms itself, ``sampler.update(terms.t, terms.per_t)``.
    """
    x = likelihood.to_model_space(y)
    b = y.shape[0]
    reconstruction = reconstruction_loss(likelihood, schedule, y)
    prior = prior_loss(likelihood, schedule, y)
    if exact:
        diffusion, positions, per_t, var = _exact_diffusion(denoiser, schedule, T, x, nodes, weighting, max_batch)
        return BoundTerms(reconstruction, prior, diffusion, positions, per_t, var)
    sampler = TimestepSampler("antithetic", T) if sampler is None else sampler
    t, w = sampler(b * num_t, device=x.device, dtype=x.dtype)
    xx = x.repeat((num_t,) + (1,) * (x.dim() - 1))  # (num_t·B, ...)
    term, weighted = diffusion_loss(denoiser, schedule, T, xx, t, weighting, variance_schedule=variance_schedule)
    diffusion = (w * weighted).view(num_t, b).mean(0)  # (num_t·B,) -> (B,)
    return BoundTerms(reconstruction, prior, diffusion, t.detach(), term.detach())
