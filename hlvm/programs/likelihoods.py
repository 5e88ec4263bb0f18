"""Observation models p(x | ·) that every model in the zoo shares, so all ELBOs bound the same
discrete log-likelihood and are reported in the same units.

Each likelihood knows the data's representation (see :mod:`hlvm.data`) and offers

* ``to_model_space(x)`` — the continuous x ∈ [−1, 1] (or ℝ) on which encoders and the
  diffusion act;
* ``decoder_channels`` and ``from_decoder(out)`` — the distribution a decoder network's output
  parameterizes (VAEs, HVAEs);
* ``from_z0(z_0, gamma_0)`` — VDM's decoder p(x | z_0), built from the forward process
  itself: logits_k = −(z_0 − α_0 x_k)² / (2σ_0²) over the data's grid values x_k
  (Kingma et al. 2021, Appendix C); for two values this is Bernoulli with logit 2α_0 z_0/σ_0².

All distributions returned have the data's shape as event shape and are ready for
``pyro.sample("x", ..., obs=x)`` where x is in the *data* representation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import pyro.distributions as dist
from pyro.infer.util import is_validation_enabled

from ..diffusion.gaussian import pad_gamma
from ..validate import describe_values
from .discretized import DiscretizedGaussian, GridGaussian, grid_values

__all__ = ["at_least_float32", "Likelihood", "BernoulliLikelihood", "Discretized8bitLikelihood", "GaussianLikelihood",
           "DiscretizedGaussian", "GridGaussian", "make_likelihood"]


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is in a lower precision (bf16/fp16 from a network under autocast).

    Every distribution whose log-density enters the bound is built from float32 parameters, so
    each site's log-probability and their sums over pixels and examples accumulate in float32
    however the networks ran (mixed precision: half-precision matmuls, float32 bound)."""
    return t.float() if t.is_floating_point() and t.dtype in (torch.bfloat16, torch.float16) else t


class Likelihood:
    """Base class. ``event_dims`` is the number of data dimensions (e.g. 3 for (C, H, W))."""

    kind = "abstract"
    #: decoder output channels per data channel
    decoder_channels = 1

    def __init__(self, event_shape):
        self.event_shape = tuple(event_shape)

    @property
    def event_dims(self) -> int:
        return len(self.event_shape)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def to_model_space(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def from_decoder(self, out):  # pragma: no cover - abstract
        raise NotImplementedError

    def from_z0(self, z_0, gamma_0):  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, x):
        """The observation as ``pyro.sample`` wants it (long indices for categorical grids)."""
        return x

    def check(self, x):
        """Raise ValueError unless x has the event shape and the representation's values.

        The shape is always checked; the values (a device sync on CUDA) only while Pyro validation
        is enabled, as ``torch.distributions`` does with ``validate_args``.
        """
        if tuple(x.shape[-self.event_dims:]) != self.event_shape:
            raise ValueError(f"data of shape {tuple(x.shape)} does not end in the likelihood's event shape {self.event_shape}")


class BernoulliLikelihood(Likelihood):
    """Binarized data x ∈ {0, 1}; model space 2x − 1 ∈ {−1, 1}."""

    kind = "binary"

    def to_model_space(self, x):
        return 2 * x - 1

    def from_decoder(self, logits):
        logits = at_least_float32(logits)
        return dist.Bernoulli(logits=logits.reshape(logits.shape[:1] + self.event_shape)).to_event(self.event_dims)

    def from_z0(self, z_0, gamma_0):
        g = pad_gamma(gamma_0, z_0)
        # log N(z; α, σ²) − log N(z; −α, σ²) = 2αz/σ²
        logits = 2 * z_0 * torch.sigmoid(-g).sqrt() / torch.sigmoid(g)
        return dist.Bernoulli(logits=logits).to_event(self.event_dims)

    def mean(self, d):
        return d.base_dist.probs

    def check(self, x):
        super().check(x)
        # x (1 − x) vanishes exactly on {0, 1} (NaN and ±inf give NaN/−inf); one fused count is ~3×
        # cheaper than ((x == 0) | (x == 1)).all() on a batch of images
        if is_validation_enabled() and int(torch.count_nonzero(x * (1 - x))) != 0:
            hint = ("; 8-bit grey levels? use likelihood='8bit' (CLI: --binarize 8bit)"
                    if bool(torch.isfinite(x).all()) and float(x.max()) > 1 else "")
            raise ValueError(f"binary likelihood needs data in {{0, 1}}: {describe_values(x)}{hint}")


class Discretized8bitLikelihood(Likelihood):
    """8-bit data x ∈ {0..255}; model space x̃ = 2(x + ½)/256 − 1 (VDM's rescaling).

    Two decoders, both O(D) (see :mod:`hlvm.programs.discretized`):

    * ``from_decoder`` (VAE, HVAE: the network outputs (loc, log-scale) per pixel, scale =
      softplus + 10⁻³) — by default a :class:`DiscretizedGaussian`, the mass of N(loc, scale²) on
      each bin by CDF differences at the bin edges (PixelCNN++, improved-diffusion). Until issue
      15 this was VDM's grid softmax (``decoder="grid"`` keeps it, e.g. to re-evaluate an older
      checkpoint with its own pmf): a 256-way table per pixel made an 8-bit VAE step ~80–100×
      the binary one. The two pmfs coincide when scale ≪ Δ = 2/256 and differ otherwise; both
      are pmfs on the same 256 values, so every bound stays a bound on the same discrete
      log-likelihood, in the same units.
    * ``from_z0`` (VDM's p(x | z_0), scale σ_0/α_0 = exp(γ_0/2)) — always the
      :class:`GridGaussian` of Kingma et al. (2021, Appendix C), windowed so that it costs O(D · W)
      with W ≈ 10 scales/Δ and equals the full softmax to rounding. The CDF form is *not*
      substituted there: at γ_0 = −13.3 (scale ≈ Δ/6) it would lower the likelihood by ~0.03 nats
      per pixel (~22 nats per MNIST image), changing every VDM's reported bound.
    """

    kind = "8bit"
    decoder_channels = 2
    decoders = ("cdf", "grid")

    def __init__(self, event_shape, levels: int = 256, decoder: str = "cdf"):
        super().__init__(event_shape)
        if not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        if decoder not in self.decoders:
            raise ValueError(f"decoder must be one of {self.decoders}, got {decoder!r}")
        self.levels, self.decoder = levels, decoder
        self.grid = grid_values(levels)

    def to_model_space(self, x):
        return 2 * (x + 0.5) / self.levels - 1

    def from_decoder(self, out):
        out = at_least_float32(out)
        b = out.shape[0]
        loc, log_scale = out.reshape(b, 2, *self.event_shape).unbind(1)  # (B, 2·C, ...) -> 2 × (B, C, ...)
        scale = F.softplus(log_scale) + 1e-3
        family = DiscretizedGaussian if self.decoder == "cdf" else GridGaussian
        return family(loc, scale, self.levels).to_event(self.event_dims)

    def from_z0(self, z_0, gamma_0):
        g = pad_gamma(gamma_0, z_0)
        # z_0/α_0 ~ N(x, σ_0²/α_0²): scale = exp(γ_0/2)
        loc = z_0 / torch.sigmoid(-g).sqrt()
        return GridGaussian(loc, torch.exp(0.5 * g).expand_as(loc), self.levels).to_event(self.event_dims)

    def mean(self, d):
        return d.base_dist.mean

    def check(self, x):
        super().check(x)
        if is_validation_enabled() and not bool(((x >= 0) & (x <= self.levels - 1) & (x == x.round())).all()):
            hint = ("; grey levels scaled to [0, 1]? multiply by 255, or use likelihood='binary' for {0, 1} data"
                    if bool(torch.isfinite(x).all()) and float(x.max()) <= 1 else "")
            raise ValueError(f"8bit likelihood needs integer data in [0, {self.levels - 1}]: {describe_values(x)}{hint}")


class GaussianLikelihood(Likelihood):
    """Continuous data with N(x; loc, scale²); VDM's continuous decoder N(x; z_0/α_0, σ_0²/α_0²).

    ``scale`` is the fixed observation noise of :meth:`from_decoder` (e.g. PPCA's σ).
    """

    kind = "continuous"

    def __init__(self, event_shape, scale: float = 0.1):
        super().__init__(event_shape)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale

    def to_model_space(self, x):
        return x

    def check(self, x):
        super().check(x)
        if is_validation_enabled() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"continuous likelihood needs finite data: {describe_values(x)}")

    def from_decoder(self, out):
        out = at_least_float32(out)
        loc = out.reshape(out.shape[:1] + self.event_shape)
        return dist.Normal(loc, torch.full_like(loc, self.scale)).to_event(self.event_dims)

    def from_z0(self, z_0, gamma_0):
        g = pad_gamma(gamma_0, z_0)
        loc = z_0 / torch.sigmoid(-g).sqrt()
        return dist.Normal(loc, torch.exp(0.5 * g).expand_as(loc)).to_event(self.event_dims)

    def mean(self, d):
        return d.base_dist.loc


def make_likelihood(kind: str, event_shape, **kw) -> Likelihood:
    """The likelihood for a data representation: ``binary``, ``8bit`` or ``continuous``."""
    table = {"binary": BernoulliLikelihood, "8bit": Discretized8bitLikelihood, "continuous": GaussianLikelihood}
    if kind not in table:
        raise ValueError(f"unknown likelihood kind {kind!r}; expected one of {sorted(table)}")
    return table[kind](event_shape, **kw)
