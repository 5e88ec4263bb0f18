"""Gaussians discretized to K grid values (8-bit data: K = 256 on [−1, 1]), two pmfs in O(D).

Both take integer bin indices k ∈ {0..K−1} (floats or longs) and sample them as floats; the grid
values are the bin centres x_k = −1 + (k + ½)Δ, Δ = 2/K.

* :class:`DiscretizedGaussian` — the mass of N(loc, scale²) on each bin, by **CDF differences**
  at the bin edges, the edge bins open to ±∞:

      P(k) = Φ((x_k + Δ/2 − loc)/scale) − Φ((x_k − Δ/2 − loc)/scale),

  as PixelCNN++ (Salimans et al. 2017, eq. 2) and improved-diffusion's
  ``discretized_gaussian_log_likelihood`` (Nichol & Dhariwal 2021) do, but in log space
  throughout (no probability floor): log Φ by ``torch.special.log_ndtr`` (its asymptotic series
  below −20, where torch's gradient is inaccurate), the difference of two
  CDFs by log Φ(b) + log(1 − exp(log Φ(a) − log Φ(b))), taken on the side where both lie below
  the mean (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)); bins too narrow for that difference to carry digits
  use the midpoint rule with its w³ and w⁵ terms. O(1) per element.
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
from torch.special import log_ndtr, ndtr

__all__ = ["DiscretizedGaussian", "GridGaussian", "log_diff_ndtr", "safe_log_ndtr", "grid_values"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: a bin narrower than this (in scales, times 1 + |midpoint|) is integrated by the midpoint rule;
#: where the series' truncation error (~τ⁶·5·10⁻⁵) meets the CDF difference's cancellation (~eps/τ)
_MIDPOINT_BELOW = {True: 0.03, False: 0.4}  # float64?
#: the grid window reaches this many scales beyond the nearest value (terms there are < e^-42)
_WINDOW_SCALES = 10.0
#: below this, log Φ by its asymptotic series
_TAIL = -20.0


def grid_values(levels: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The bin centres x_k = −1 + (k + ½)·2/K of K levels on [−1, 1] (VDM's 8-bit rescaling)."""
    return 2 * (torch.arange(levels, dtype=dtype, device=device) + 0.5) / levels - 1


def _tail_series(x: torch.Tensor) -> torch.Tensor:
    """log1p(S(x)), Φ(x) = φ(x)/(−x) · (1 + S(x)), S = −x⁻² + 3x⁻⁴ − 15x⁻⁶ + 105x⁻⁸ − 945x⁻¹⁰ (x ≤ −20:
    truncation error < 3·10⁻¹²)."""
    r = 1 / (x * x)
    return torch.log1p(r * (-1 + r * (3 + r * (-15 + r * (105 - 945 * r)))))


def safe_log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Φ(x) with an accurate gradient everywhere.

    ``torch.special.log_ndtr``'s value is fine but its gradient φ/Φ loses its digits in the far
    lower tail (float32: 1730 instead of 2000 at x = −2000, 0.4 at −10⁵); below x = −20 this uses
    the asymptotic expansion −x²/2 − ½ log 2π − log(−x) + log1p(S(x)) (Abramowitz & Stegun 26.2.12).
    """
    tail = x < _TAIL
    xt = torch.where(tail, x, _TAIL)  # only tail values reach the series (no overflow elsewhere)
    asym = -0.5 * xt * xt - _HALF_LOG_2PI - torch.log(-xt) + _tail_series(xt)
    return torch.where(tail, asym, log_ndtr(x.clamp(min=_TAIL)))


def _log1mexp(t: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(t)) for t < 0 (Mächler 2012); t is clamped below 0 so gradients stay finite."""
    t = t.clamp(max=-torch.finfo(t.dtype).tiny)
    return torch.where(t > -math.log(2), torch.log(-torch.expm1(t)), torch.log1p(-torch.exp(t)))


def log_diff_ndtr(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b, stable in both tails and for narrow intervals.

    ``w`` = b − a when the caller has it more accurately than the difference (e.g. Δ/scale).

    Both ends are reflected below zero when the interval's midpoint is positive
    (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)), so the difference is always of two small lower-tail CDFs. When
    w = b − a is so small that w·(1 + |m|) < τ (m the midpoint; τ = 0.03 in float64, 0.4 in lower
    precisions), the CDF difference would lose its digits to cancellation; there
    ∫φ = φ(m)·w·(1 + (m² − 1)w²/24 + (m⁴ − 6m² + 3)w⁴/1920), the midpoint rule with its next two
    terms (relative error ~ 5·10⁻⁵ τ⁶: 10⁻¹⁴ in float64, 2·10⁻⁷ in float32).
    """
    m = 0.5 * (a + b)
    w = b - a if w is None else w
    flip = m > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi = safe_log_ndtr(hi)
    exact = log_hi + _log1mexp(_log_ratio(lo, hi, w, log_hi))
    narrow = w * (1 + m.abs()) < _MIDPOINT_BELOW[w.dtype == torch.float64]
    # the series only where it is used, so that its overflow elsewhere cannot make NaN gradients
    m, w = torch.where(narrow, m, 0.0), torch.where(narrow, w, 1e-3)
    m2, w2 = m * m, w * w
    series = w2 / 24 * (m2 - 1) + w2 * w2 / 1920 * (m2 * m2 - 6 * m2 + 3)
    midpoint = -0.5 * m2 - _HALF_LOG_2PI + torch.log(w) + torch.log1p(series)
    return torch.where(narrow, midpoint, exact)


def _log_ratio(lo, hi, w, log_hi):
    """log Φ(lo) − log Φ(hi) for lo < hi ≤ −m-side; in the far tail (hi < −20) from the expansion,
    factored so that no two large numbers cancel: (hi² − lo²)/2 = w·(lo + hi)/2, and
    log(−lo) − log(−hi) = log1p(w/(−hi))."""
    tail = hi < _TAIL
    lt, ht = torch.where(tail, lo, 2 * _TAIL), torch.where(tail, hi, _TAIL)
    wt = torch.where(tail, w, -_TAIL)
    far = wt * 0.5 * (lt + ht) - torch.log1p(wt / -ht) + _tail_series(lt) - _tail_series(ht)
    return torch.where(tail, far, safe_log_ndtr(lo) - log_hi)


class _Grid(TorchDistribution):
    """Shared parts: parameters, support, expand; K = ``levels`` bins on [−1, 1]."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, loc, scale, levels: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.levels = int(levels)
        self.width = 2.0 / self.levels  # Δ
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def _index(self, value) -> torch.Tensor:
        return value.long() if torch.is_tensor(value) else torch.as_tensor(value).long()

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.levels)


class DiscretizedGaussian(_Grid):
    """N(loc, scale²) discretized to K bins of width Δ = 2/K on [−1, 1], edge bins open to ±∞.

    ``log_prob(k)`` = log(Φ(b) − Φ(a)), a = (x_k − Δ/2 − loc)/scale, b = (x_k + Δ/2 − loc)/scale
    (a = −∞ for k = 0, b = +∞ for k = K − 1), in O(1) per element (see :func:`log_diff_ndtr`).
    ``sample`` rounds a Normal draw to its bin (exact for this pmf); ``mean`` is Σ_k k·P(k) =
    Σ_{j=1}^{K−1} P(k ≥ j) (K − 1 CDFs per element: meant for reconstructions, not for training).
    """

    def log_prob(self, value):
        k = self._index(value)
        k, loc, scale = torch.broadcast_tensors(k, self.loc, self.scale)
        lower_edge = -1 + k.to(loc.dtype) * self.width  # x_k − Δ/2
        a = (lower_edge - loc) / scale
        b = (lower_edge + self.width - loc) / scale
        interior = log_diff_ndtr(a, b, self.width / scale)
        return torch.where(k <= 0, safe_log_ndtr(b), torch.where(k >= self.levels - 1, safe_log_ndtr(-a), interior))

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
