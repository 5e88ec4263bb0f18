"""A top-down (ladder) hierarchical VAE, with flags that walk the continuum to diffusion.

Generative story: z_L ∼ N(0, I);  z_l ∼ p(z_l | z_{l+1}) for l = L−1..1;  x ∼ p(x | z_1).
Inference: a deterministic bottom-up pass d_1 = f_1(x), d_l = f_l(d_{l−1}), then a stochastic
*top-down* posterior q(z_L | d_L) ∏_l q(z_l | z_{l+1}, d_l) in the generative model's own order,
combining the bottom-up message with the generative transition by

* ``merge="precision"`` — the ladder VAE's precision-weighted merge (Sønderby et al. 2016), or
* ``merge="residual"``  — NVAE's residual posterior N(μ_p + Δμ, σ_p · Δσ) (Vahdat & Kautz 2020).

Flags (De Sousa Ribeiro & Glocker 2024, §2.3–2.4 and Fig. 5: from HVAE to VDM):

* ``shared=True``            — ONE weight-shared generative network for every layer (diffusion-like),
  conditioned on the layer index;
* ``posterior="diffusion"``  — the fixed Gaussian-diffusion posterior q(z_L | x) ∏ q(z_l | z_{l+1}, x)
  at levels t_l = l/L of a noise schedule; latents then have the data's dimension;
* ``transition="denoiser"``  — p(z_l | z_{l+1}) = q(z_l | z_{l+1}, x = x̂θ(z_{l+1})) with the shared
  denoiser: together with the diffusion posterior this is a VDM with T = L − 1 (its z_0 … z_T) and a
  learned decoder (tests/test_continuum.py checks the log weights agree draw by draw); the denoiser
  predicts what VDM's does (``parameterization="auto"``: logits of x for binary data, ε otherwise).
  With ε-prediction on binary data, x̂ = (z − σ ε̂)/α divides by α ≈ 0.05 at the top level: at L = 2
  (one step spanning SNR e⁻⁶ → 1) the continuum's first run measured −107,791 nats.

Top-down guides satisfy ``TraceMeanField_ELBO``'s condition, so its analytic KLs are exact here.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, pyro_method
from torch import nn

from hlvm.diffusion.denoiser import Denoiser
from hlvm.diffusion.gaussian import p_zs_given_zt, q_zs_given_zt_x, q_zt_given_x
from hlvm.diffusion.parameterization import resolve_source
from hlvm.programs.layers import GaussianLayer, deterministic, mlp, precision_merge
from hlvm.nets import MLPBackbone
from hlvm.diffusion.schedules import NoiseSchedule, make_schedule

from hlvm.validate import check_int

from ._common import (batch_of, check_gamma_range, check_sizes, flat_dim, prepare, ref_tensor, resolve_likelihood,
                      std_normal)

__all__ = ["TopDownHVAE"]


class _SharedTransition(nn.Module):
    """One Gaussian layer for all levels: (z_{l+1}, onehot(l)) ↦ (μ, σ) of z_l."""

    def __init__(self, dim, layers, hidden, depth):
        super().__init__()
        self.layers = layers
        self.net = GaussianLayer(dim + layers, dim, hidden, depth)

    def forward(self, z, level):
        onehot = F.one_hot(torch.full(z.shape[:1], level, device=z.device, dtype=torch.long), self.layers).to(z.dtype)
        return self.net(torch.cat([z, onehot], dim=-1))  # (B, dim + L) -> (μ, σ)


def _check_options(data_shape, layers, hidden, depth, merge, posterior, transition, gamma_min, gamma_max) -> None:
    """ValueError for sizes, names or combinations TopDownHVAE does not build."""
    check_sizes(data_shape, layers=(layers, 1), hidden=(hidden, 1), depth=(depth, 0))
    if posterior == "diffusion":
        check_gamma_range(gamma_min, gamma_max)
    for arg, value, allowed in (("merge", merge, ("precision", "residual")), ("posterior", posterior, ("learned", "diffusion")),
                                ("transition", transition, ("gaussian", "denoiser"))):
        if value not in allowed:
            raise ValueError(f"unknown {arg} {value!r}; expected one of {list(allowed)}")
    if transition == "denoiser" and posterior != "diffusion":
        raise ValueError("transition='denoiser' needs posterior='diffusion' (the denoiser acts on data-space latents)")


def _latent_dims(latent_dim, layers: int, data_dim: int | None, shared: bool) -> tuple:
    """Each layer's latent size: the data's (``data_dim``, diffusion posterior), ``latent_dim`` for all,
    or one per layer."""
    if data_dim is not None:
        dims = (data_dim,) * layers
    elif isinstance(latent_dim, int):
        dims = (check_int("latent_dim", latent_dim, 1),) * layers
    else:
        dims = tuple(check_int(f"latent_dim[{i}]", v, 1) for i, v in enumerate(latent_dim))
        if len(dims) != layers:
            raise ValueError(f"latent_dim has {len(dims)} entries but layers={layers}")
    if shared and len(set(dims)) != 1:
        raise ValueError("shared=True needs the same latent size in every layer")
    return dims


class TopDownHVAE(PyroModule):
    """Sites ``z_L`` … ``z_1`` and ``x`` (model and guide), and ``d_1`` … ``d_L`` (guide, learned posterior).

    The defaults — 3 layers of 32-d latents, hidden 400, the precision merge — and the training recipe
    (:attr:`training_defaults`: the KL warmed up over 2,000 steps (Bowman et al. 2016; Sønderby et al.
    2016), free bits 0.5 nats per layer (Kingma et al. 2016), the global gradient norm clipped at
    20,000) won the family's validation search on full MNIST (docs/results.md): by 1.06 ± 0.40 nats of
    validation ELBO over the residual merge (measured on the residual merge: without warm-up −1.8,
    without free bits −0.8 nats).  The recipe also evaluates and samples an exponential moving average
    of the weights (decay 0.999, warmed up), chosen on the validation split as the VAE's was (20
    epochs, static binarization; docs/studies/hvae_td_validation_*.json): −97.17 nats with it, −100.01
    without.

    .. warning:: Without warm-up and free bits the upper layers of this hierarchy collapse to the
        prior (posterior collapse; the precision merge most of all): train it with its recipe, which
        ``hlvm train``/``compare``/``demo`` apply unless told otherwise.
    """

    #: trainer options this hierarchy trains with by default (:func:`hlvm.registry.training_defaults`)
    training_defaults = {"kl_warmup": 2000, "free_bits": 0.5, "grad_clip": 20000.0, "ema": 0.999}

    def __init__(self, data_shape=(1, 28, 28), likelihood="binary", layers: int = 3, latent_dim=32,
                 hidden: int = 400, depth: int = 1, merge: str = "precision", shared: bool = False,
                 posterior: str = "learned", transition: str = "gaussian", schedule="linear",
                 gamma_min: float = -6.0, gamma_max: float = 6.0, parameterization: str = "auto"):
        super().__init__()
        _check_options(data_shape, layers, hidden, depth, merge, posterior, transition, gamma_min, gamma_max)
        self.data_shape = tuple(data_shape)
        self.likelihood = resolve_likelihood(likelihood, self.data_shape)
        d = flat_dim(self.data_shape)
        self.L, self.merge, self.shared, self.posterior, self.transition = layers, merge, shared, posterior, transition
        self.latent_dims = dims = _latent_dims(latent_dim, layers, d if posterior == "diffusion" else None, shared)
        self.decoder = mlp(dims[0], d * self.likelihood.decoder_channels, hidden, depth)
        # VDM's rule, so that family (d) ≡ VDM keeps holding; a bad name is a ValueError naming the choices
        self.parameterization = resolve_source(parameterization, self.likelihood.kind)
        self._build_transitions(d, hidden, depth, (gamma_min, gamma_max))
        if posterior == "diffusion":
            self.schedule = schedule if isinstance(schedule, NoiseSchedule) else make_schedule(schedule, gamma_min, gamma_max)
        else:
            self._build_learned_posterior(d, hidden, depth)

    def _build_transitions(self, d, hidden, depth, gamma_range):
        """The generative transitions p(z_l | z_{l+1}), l = 1..L−1: denoisers, one shared layer, or one per level."""
        layers, dims = self.L, self.latent_dims
        if self.transition == "denoiser":
            make = lambda: Denoiser(MLPBackbone((d,), hidden, 2, gamma_range=gamma_range),  # noqa: E731
                                    self.parameterization)
            self.denoisers = nn.ModuleList([make()] if self.shared else [make() for _ in range(layers - 1)])
        elif self.shared:
            self.shared_transition = _SharedTransition(dims[0], layers, hidden, depth)
        else:
            self.transitions = nn.ModuleList(GaussianLayer(dims[l], dims[l - 1], hidden, depth) for l in range(1, layers))

    def _build_learned_posterior(self, d, hidden, depth):
        """The guide's networks: the bottom-up pass, q(z_L | x), and per level a message or a residual."""
        layers, dims = self.L, self.latent_dims
        self.up = nn.ModuleList([mlp(d, hidden, hidden, depth)] + [mlp(hidden, hidden, hidden, depth) for _ in range(1, layers)])
        self.q_top = GaussianLayer(hidden, dims[-1], hidden, depth)
        if self.merge == "precision":
            self.messages = nn.ModuleList(GaussianLayer(hidden, dims[l - 1], hidden, depth) for l in range(1, layers))
        else:
            self.residuals = nn.ModuleList(GaussianLayer(hidden + dims[l], dims[l - 1], hidden, depth) for l in range(1, layers))

    # ------------------------------------------------------------------ pieces
    def _levels(self, ref):
        """γ(t_l) for t_l = l/L, l = 0..L (index l)."""
        t = torch.arange(self.L + 1, dtype=ref.dtype, device=ref.device) / self.L
        return self.schedule.gamma(t)

    def transitions_fn(self, ref, register: bool = True):
        """(z_{l+1}, l) ↦ p(z_l | z_{l+1}) for l = 1..L−1.

        Each access ``self.child`` of a PyroModule registers all of the child's parameters with
        Pyro again, so the networks are fetched here once per program run and closed over.
        ``register=False`` reads them without registering: the guide reuses the prior's networks,
        whose parameters belong to (and are registered by) the model.
        """
        child = (lambda name: getattr(self, name)) if register else self._modules.__getitem__
        if self.transition == "denoiser":
            g, denoisers = self._levels(ref), child("denoisers")

            def p(z_next, l):
                den = denoisers[0] if self.shared else denoisers[l - 1]
                return p_zs_given_zt(den, z_next, g[l], g[l + 1])
        elif self.shared:
            net = child("shared_transition")

            def p(z_next, l):
                return dist.Normal(*net(z_next, l - 1))
        else:
            nets = child("transitions")

            def p(z_next, l):
                return dist.Normal(*nets[l - 1](z_next))
        return p

    # ------------------------------------------------------------------ the Pyro program
    @pyro_method
    def model(self, x=None, batch_size=None):
        x = None if x is None else prepare(self, x)
        b = batch_of(x, batch_size)
        ref = ref_tensor(self, x)
        p_transition, decoder = self.transitions_fn(ref), self.decoder  # registered once, outside the plate
        with pyro.plate("data", b):
            z = pyro.sample(f"z_{self.L}", std_normal(b, self.latent_dims[-1], ref))
            for l in range(self.L - 1, 0, -1):
                z = pyro.sample(f"z_{l}", p_transition(z, l).to_event(1))
            px = self.likelihood.from_decoder(decoder(z))
            return pyro.sample("x", px, obs=None if x is None else self.likelihood.observe(x))

    @pyro_method
    def guide(self, x=None, batch_size=None):
        x = prepare(self, x, values=False)  # NaN/inf only: the model checks the representation
        xt = self.likelihood.to_model_space(x).flatten(1)  # (B, D)
        if self.posterior == "diffusion":
            g = self._levels(xt)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample(f"z_{self.L}", q_zt_given_x(xt, g[self.L]).to_event(1))
                for l in range(self.L - 1, 0, -1):
                    z = pyro.sample(f"z_{l}", q_zs_given_zt_x(z, xt, g[l], g[l + 1]).to_event(1))
                return z
        # the networks, fetched (and registered with Pyro) once per run, outside the plate
        up, q_top, p_transition = self.up, self.q_top, self.transitions_fn(xt, register=False)
        merge_nets = self.messages if self.merge == "precision" else self.residuals
        with pyro.plate("data", x.shape[0]):
            hs, h = [], xt
            for l, f in enumerate(up, start=1):
                h = deterministic(f"d_{l}", f(h), event_dim=1)
                hs.append(h)
            loc, scale = q_top(hs[-1])
            z = pyro.sample(f"z_{self.L}", dist.Normal(loc, scale).to_event(1))
            for l in range(self.L - 1, 0, -1):
                p = p_transition(z, l)
                if self.merge == "precision":
                    m_loc, m_scale = merge_nets[l - 1](hs[l - 1])
                    loc, scale = precision_merge(m_loc, m_scale, p.loc, p.scale)
                else:
                    d_loc, d_scale = merge_nets[l - 1](torch.cat([hs[l - 1], z], dim=-1))
                    loc, scale = p.loc + d_loc, p.scale * d_scale
                z = pyro.sample(f"z_{l}", dist.Normal(loc, scale).to_event(1))
            return z
