"""``DiffusionELBO``: Pyro's ``Trace_ELBO`` with every diffusion chain collapsed analytically.

Sites outside diffusion chains are handled exactly as ``Trace_ELBO`` handles them, so the
estimator works for any hierarchy that uses :class:`~hlvm.diffusion.DiffusionChain` — the zoo's
``VDM`` and user-written models alike.  For each chain over y it adds

    −L(y) = −E_q[−log p(y|z_0)] − KL(q(z_1|y) ‖ N(0,I)) − L_diff(y),

    L_diff = ½ T · E_{ε, i∼U{1..T}}[expm1(γ_t − γ_s) ‖ε − ε̂θ(z_t; t)‖²]   (discrete, VDM eq. 13)
    L_diff = ½ · E_{ε, t∼U(0,1)}[γ'(t) ‖ε − ε̂θ(z_t; t)‖²]                (continuous, VDM eq. 17)

drawing one (or ``num_t``) timesteps per example, all in ONE batched denoiser call, so a step
costs the same for T = 10 and T = 10⁴.  ``exact=True`` (evaluation) sums all T terms instead.

References:
    Kingma, Salimans, Poole, Ho. *Variational Diffusion Models*. NeurIPS 2021, §3–4, App. I.
    Kingma, Gao. *Understanding Diffusion Objectives as the ELBO with Simple Data Augmentation*. 2023.
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO

from .chain import analytic_context
from ..diffusion.timesteps import TimestepSampler
from ..diffusion.weighting import get_weighting, is_monotone

__all__ = ["DiffusionELBO"]


class DiffusionELBO(Trace_ELBO):
    """An ELBO that evaluates diffusion chains analytically (see module docstring).

    Args:
        sampler: ``"uniform"``, ``"antithetic"`` (low-discrepancy; default) or ``"importance"``.
        num_t: timesteps drawn per example (the denoiser runs once on batch × num_t).
        exact: sum all T terms (discrete time) or use ``eval_nodes`` stratified nodes
            (continuous time) instead of sampling timesteps — for evaluation.
        weighting: ``"elbo"`` (w ≡ 1) or a weighting of :mod:`hlvm.weighting`.
        eval_nodes: nodes of the continuous-time quadrature when ``exact`` (default 1000).
        max_batch: largest denoiser batch used by ``exact``.
        **kwargs: passed to :class:`pyro.infer.Trace_ELBO` (``num_particles``, …).

    After each evaluation, :attr:`last_terms` maps each chain's name to its per-example
    ``reconstruction``, ``prior``, ``diffusion`` and ``loss`` (nats), and ``t``/``per_t`` terms.

    .. warning:: With ``weighting`` other than ``"elbo"`` the objective is *not* an ELBO
        (:attr:`is_elbo` is False); report it as a weighted loss.
    """

    def __init__(self, sampler: str = "antithetic", num_t: int = 1, exact: bool = False,
                 weighting: str = "elbo", eval_nodes: int = 1000, max_batch: int = 8192, **kwargs):
        super().__init__(**kwargs)
        if num_t < 1:
            raise ValueError(f"num_t must be >= 1, got {num_t}")
        self.sampler_kind = sampler
        TimestepSampler(sampler)  # validates the name now
        self.num_t, self.exact, self.eval_nodes, self.max_batch = num_t, exact, eval_nodes, max_batch
        self.weighting_name = weighting
        self.weighting = get_weighting(weighting)
        self.samplers: dict[str, TimestepSampler] = {}
        self.last_terms: dict[str, dict] = {}

    @property
    def is_elbo(self) -> bool:
        """True only for the identity weighting."""
        return self.weighting is None

    @property
    def is_augmented_elbo(self) -> bool:
        """True when w is monotone: an ELBO of noise-augmented data (Kingma & Gao 2023)."""
        return is_monotone(self.weighting_name)

    # -- Pyro hooks: every trace is taken with the chains collapsed ----------------------
    def _get_trace(self, model, guide, args, kwargs):
        with analytic_context(self):
            return super()._get_trace(model, guide, args, kwargs)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        with analytic_context(self):
            return super()._guess_max_plate_nesting(model, guide, args, kwargs)

    # -- the analytic bound of one chain -----------------------------------------------
    def sampler_for(self, chain) -> TimestepSampler:
        key = f"{chain.name}/T={chain.T}"
        if key not in self.samplers:
            self.samplers[key] = TimestepSampler(self.sampler_kind, chain.T)
        return self.samplers[key]

    def state_dict(self) -> dict:
        """Timestep-sampler state (the importance sampler's history), for checkpoints."""
        return {k: s.state_dict() for k, s in self.samplers.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, sd in state.items():
            name, _, T = k.partition("/T=")
            s = self.samplers.setdefault(k, TimestepSampler(self.sampler_kind, None if T == "None" else int(T)))
            s.load_state_dict(sd)

    def _times_exact(self, chain, like):
        if chain.T is not None:
            return torch.arange(1, chain.T + 1, device=like.device, dtype=like.dtype) / chain.T
        u = torch.rand((), device=like.device, dtype=like.dtype)
        return (torch.arange(self.eval_nodes, device=like.device, dtype=like.dtype) + u) / self.eval_nodes

    def chain_terms(self, chain, y: torch.Tensor) -> dict:
        """Per-example terms of −log p(y) ≤ loss for one chain (called by the chain)."""
        ref = chain.decoder.to_model_space(y)
        b = y.shape[0]
        reconstruction = chain.reconstruction(y)
        prior = chain.prior(y)
        if self.exact:
            t_all = self._times_exact(chain, ref)
            k = t_all.numel()
            per_t, parts = [], []
            step = max(1, self.max_batch // b)
            for tt in t_all.split(step):
                t = tt.repeat_interleave(b)  # (n·B,) times, example-major inside each time
                yy = y.repeat((tt.numel(),) + (1,) * (y.dim() - 1))  # (n·B, ...)
                term, weighted = chain.diffusion_terms(yy, t, self.weighting)
                parts.append(weighted.view(tt.numel(), b))
                per_t.append(term.view(tt.numel(), b).mean(1).detach())
            diffusion = torch.cat(parts).mean(0)  # mean over the k nodes/steps
            t_rec, per_t = t_all.detach(), torch.cat(per_t)
        else:
            sampler = self.sampler_for(chain)
            sampler.to(ref.device)
            t, w = sampler(b * self.num_t, device=ref.device, dtype=ref.dtype)
            yy = y.repeat((self.num_t,) + (1,) * (y.dim() - 1))  # (num_t·B, ...)
            term, weighted = chain.diffusion_terms(yy, t, self.weighting)
            sampler.update(t, term)
            diffusion = (w * weighted).view(self.num_t, b).mean(0)
            t_rec, per_t = t.detach(), term.detach()
        loss = reconstruction + prior + diffusion
        self.last_terms[chain.name] = {
            "reconstruction": reconstruction.detach(), "prior": prior.detach(),
            "diffusion": diffusion.detach(), "loss": loss.detach(), "t": t_rec, "per_t": per_t,
        }
        return {"loss": loss, "reconstruction": reconstruction, "prior": prior, "diffusion": diffusion}
