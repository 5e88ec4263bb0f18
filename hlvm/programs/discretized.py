"""Gaussians discretized to K grid values (8-bit data: K = 256 on [−1, 1]), two pmfs in O(D).

Both take integer bin indices k ∈ {0..K−1} (floats or longs) and sample them as floats; the grid
values are the bin centres x_k = −1 + (k + ½)Δ, Δ = 2/K.

* :class:`DiscretizedGaussian` — the mass of N(loc, scale²) on each bin, by **CDF differences**
  at the bin edges, the edge bins open to ±∞:

      P(k) = Φ((x_k + Δ/2 − loc)/scale) − Φ((x_k − Δ/2 − loc)/scale),

  as PixelCNN++ (Salimans et al. 2017, eq. 2) and improved-diffusion's
  ``discretized_gaussian_log_likelihood`` (Nichol & Dhariwal 2021) do, but in log space
  throughout (no probability floor; :func:`hlvm.programs.normal_cdf.log_bin_mass`): the difference
  of two CDFs taken on the side where both lie below the mean (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)), from
  ``erfc``, or from the asymptotic series in the far tail; bins too narrow for that difference to
  carry digits by the midpoint rule with its w³ and w⁵ terms. Gradients are analytic (φ/Φ ratios,
  stable in the tails, where ``torch.special.log_ndtr``'s own gradient is off by 13% at −2000 in
  float32) and cost no autograd graph. O(1) per element.
* :class:`GridGaussian` — VDM's decoder p(x | z_0) (Kingma et al. 2021, Appendix C): a
  categorical over the K values with logits −(x_k − loc)²/(2 scale²). Its normalizer is a sum
  over the grid, but all terms farther than ~10 scales from loc are below float64 rounding of the
  largest, so it is summed over a **window** of 2W + 1 grid values around loc,
  W = ⌈10 · max(scale)/Δ⌉ + 1 (the whole grid once that is wider): O(D · W), exact to rounding.
  For VDM's σ_0/α_0 = exp(γ_0/2) ≈ 1.3·10⁻³ (γ_0 = −13.3) the window has 7 values, not 256.

The two are different pmfs unless scale ≪ Δ (then both put all mass on the nearest bin); at
VDM's γ_0 = −13.3 (scale ≈ Δ/6) they differ by ~0.03 nats per pixel, which is why VDM keeps its
own form and the VAE/HVAE decoders (whose scale is learned) use the CDF one — see
:class:`~hlvm.programs.likelihoods.Discretized8bitLikelihood`.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.special import ndtr

from .normal_cdf import log_bin_mass

__all__ = ["DiscretizedGaussian", "GridGaussian", "grid_values"]

#: the grid window reaches this many scales beyond the nearest value (terms there are < e^-42)
_WINDOW_SCALES = 10.0


def grid_values(levels: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The bin centres x_k = −1 + (k + ½)·2/K of K levels on [−1, 1] (VDM's 8-bit rescaling)."""
    return 2 * (torch.arange(levels, dtype=dtype, device=device) + 0.5) / levels - 1


class _Grid(TorchDistribution):
    """Shared parts: parameters, support, expand; K = ``levels`` bins on [−1, 1]."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc, scale, levels: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.levels = int(levels)
        self.width = 2.0 / self.levels  # Δ
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @property
    def support(self):
        return constraints.integer_interval(0, self.levels - 1)

    def _index(self, value) -> torch.Tensor:
        """Bin indices as longs (checked against the support while validating, as torch does)."""
        value = value if torch.is_tensor(value) else torch.as_tensor(value)
        if self._validate_args:
            self._validate_sample(value)
        return value.long()

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.levels)


class DiscretizedGaussian(_Grid):
    """N(loc, scale²) discretized to K bins of width Δ = 2/K on [−1, 1], edge bins open to ±∞.

    ``log_prob(k)`` = log(Φ(b) − Φ(a)), a = (x_k − Δ/2 − loc)/scale, b = (x_k + Δ/2 − loc)/scale
    (a = −∞ for k = 0, b = +∞ for k = K − 1), in O(1) per element (see :func:`log_bin_mass`).
    ``sample`` rounds a Normal draw to its bin (exact for this pmf); ``mean`` is Σ_k k·P(k) =
    Σ_{j=1}^{K−1} P(k ≥ j) (K − 1 CDFs per element: meant for reconstructions, not for training).
    """

    def log_prob(self, value):
        k = self._index(value)
        k, loc, scale = torch.broadcast_tensors(k, self.loc, self.scale)
        lower_edge = -1 + k.to(loc.dtype) * self.width  # x_k − Δ/2
        a = (lower_edge - loc) / scale
        b = (lower_edge + self.width - loc) / scale
        return log_bin_mass(a, b, self.width / scale, k <= 0, k >= self.levels - 1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            y = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return torch.floor((y + 1) / self.width).clamp(0, self.levels - 1)

    @property
    def mean(self):
        edges = -1 + self.width * torch.arange(1, self.levels, dtype=self.loc.dtype, device=self.loc.device)
        return ndtr((self.loc.unsqueeze(-1) - edges) / self.scale.unsqueeze(-1)).sum(-1)


class GridGaussian(_Grid):
    """A categorical over the K grid values with logits −(x_k − loc)²/(2 scale²), per element.

    The discretized Gaussian of VDM's decoder (Kingma et al. 2021, Appendix C). ``log_prob``,
    ``sample`` and ``mean`` sum over a window of 2W + 1 values around loc,
    W = ⌈10 · max(scale)/Δ⌉ + 1: every value outside it has a logit at least 42 below the largest
    (W(W + 1)Δ²/(2 scale²) ≥ 42), so the result equals the full 256-way softmax to rounding at
    O(D · W) cost. Reading max(scale) is a host sync; inside CUDA-graph capture the whole grid is used.
    """

    def _value(self, k: torch.Tensor) -> torch.Tensor:
        return -1 + (k.to(self.loc.dtype) + 0.5) * self.width  # x_k

    def _centre(self) -> torch.Tensor:
        """Index of the grid value nearest to loc (long)."""
        return torch.floor((self.loc.detach() + 1) / self.width).clamp(0, self.levels - 1).long()

    def _rel_logit(self, k: torch.Tensor, centre: torch.Tensor, last: bool = False) -> torch.Tensor:
        """logit_k − logit_c = −(x_k − x_c)(x_k + x_c − 2 loc)/(2 scale²), c the nearest value.

        Factored as a difference of squares, so a far-away loc costs no digits (the plain
        −(x_k − loc)²/(2 scale²) − logsumexp cancels two large numbers). ``last``: k has an extra
        last dim (a window of values per element).
        """
        loc, scale = self.loc, self.scale
        if last:
            loc, scale, centre = loc.unsqueeze(-1), scale.unsqueeze(-1), centre.unsqueeze(-1)
        x_k, x_c = self._value(k), self._value(centre)
        return -(x_k - x_c) * (x_k + x_c - 2 * loc) / (2 * scale * scale)

    def _window(self):
        """(indices (..., n), logits relative to the nearest value (..., n)) of each element; n ≤ K."""
        K = self.levels
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            n = K
        else:
            n = min(K, 2 * (math.ceil(_WINDOW_SCALES * float(self.scale.detach().max()) / self.width) + 1) + 1)
        centre = self._centre()
        start = (centre - n // 2).clamp(0, K - n)
        idx = start.unsqueeze(-1) + torch.arange(n, device=start.device)  # (..., n)
        return idx, self._rel_logit(idx, centre, last=True)

    def logits(self):
        """The full table of log-probabilities (..., K) (O(D · K); for checks)."""
        grid = grid_values(self.levels, self.loc.dtype, self.loc.device)
        return torch.log_softmax(-0.5 * ((self.loc.unsqueeze(-1) - grid) / self.scale.unsqueeze(-1)) ** 2, dim=-1)

    def log_prob(self, value):
        _, logits = self._window()
        k, centre = torch.broadcast_tensors(self._index(value), self._centre())
        return self._rel_logit(k, centre) - torch.logsumexp(logits, -1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            idx, logits = self._window()
            flat = torch.softmax(logits, -1).reshape(-1, logits.shape[-1])
            n = math.prod(sample_shape)
            pick = torch.multinomial(flat, n, replacement=True).T.reshape(tuple(sample_shape) + logits.shape[:-1])
            return idx.expand(pick.shape + idx.shape[-1:]).gather(-1, pick.unsqueeze(-1)).squeeze(-1).to(self.loc.dtype)

    @property
    def mean(self):
        idx, logits = self._window()
        return (torch.softmax(logits, -1) * idx.to(self.loc.dtype)).sum(-1)
