"""A Gaussian diffusion as a Pyro sub-program: the building block of every diffusion hierarchy.

:class:`DiffusionChain` writes the directed graphical model of a (discrete- or continuous-time)
variational diffusion over a variable y — observed data or a latent of a user's hierarchy.  In the
paper's notation, with t ∈ [0, 1] and steps t(i) = i/T:

* model:  z_1 ∼ N(0, I),  z_s ∼ p(z_s | z_t) = q(z_s | z_t, x = x̂θ(z_t; γ_t)),  y ∼ p(y | z_0)
* guide:  z_1 ∼ q(z_1 | y),  z_s ∼ q(z_s | z_t, y)   (the fixed top-down forward posterior)

with ONE shared denoiser x̂θ for all levels (De Sousa Ribeiro & Glocker, §2.4 and Fig. 5).  The
latent at t = i/T is the site ``{name}_{i}``: ``z_T`` is z_1 (pure noise) and ``z_0`` is z_0.

Under stock Pyro ELBOs (``Trace_ELBO``, ``TraceMeanField_ELBO``) these are ordinary sample sites.
Under :class:`hlvm.DiffusionELBO` the chain *collapses*: its T latent sites vanish and one factor
site ``{name}_bound`` adds −L(y) of :func:`hlvm.diffusion.bound.diffusion_bound`; the per-example
terms travel with that site (``site["infer"]["bound_terms"]``, read by :func:`bound_terms`).  The
collapse is an effect: the chain asks through the Pyro stack whether a handler collapses it
(:class:`hlvm.programs.elbo.CollapseChains`), as Pyro's own primitives ask about plates.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import effectful
from torch import nn

from ..diffusion import sampling
from ..diffusion.bound import BoundTerms
from ..diffusion.gaussian import p_zs_given_zt, q_zs_given_zt_x, q_zt_given_x
from ..limits import MAX_T
from ..validate import check_float, check_int
from .likelihoods import GaussianLikelihood, Likelihood

__all__ = ["DiffusionChain", "collapsed", "StockChains", "bound_terms", "chains_of", "override_steps", "latent_likelihood",
           "MAX_T", "check_T", "step_site", "bound_site"]


# -- the names of a chain's sites: built here only, mapped back through the records that carry them
def step_site(chain: str, i: int) -> str:
    """The site of chain ``chain``'s latent at t = i/T: ``{chain}_{i}`` (``{chain}_0`` is z_0)."""
    return f"{chain}_{i}"


def bound_site(chain: str) -> str:
    """The factor site through which a collapsed chain adds −L(y): ``{chain}_bound``."""
    return f"{chain}_bound"


def check_T(T, name: str = "T") -> None:
    """Raise ValueError unless ``T`` is None (continuous time) or an integer in [1, MAX_T]."""
    if T is not None and (not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= MAX_T):
        raise ValueError(f"{name} must be an integer in [1, {MAX_T:,}] (the float32 time grid t = i/T is exact to "
                         f"0.1% up to there) or None for continuous time, got {T!r}")


# -- the two effects a chain raises; DiffusionELBO's CollapseChains handles them ------------------
def _not_collapsed() -> bool:
    return False


def _no_bound(chain, y):
    return None


#: True inside a handler that collapses chains (a guide then samples nothing for them)
collapsed = effectful(_not_collapsed, type="hlvm_collapsed")
#: the chain's BoundTerms computed by the collapsing handler, or None when not collapsed
_bound = effectful(_no_bound, type="hlvm_diffusion_bound")


class StockChains(Messenger):
    """Effect handler under which chains stay stock sample sites, even inside a collapsing one."""

    def _pyro_hlvm_collapsed(self, msg):
        msg["value"], msg["done"], msg["stop"] = False, True, True

    def _pyro_hlvm_diffusion_bound(self, msg):
        msg["value"], msg["done"], msg["stop"] = None, True, True


def bound_terms(trace) -> dict[str, BoundTerms]:
    """{chain name: BoundTerms} of every collapsed chain in a model trace (the factor site records
    its chain's name next to the terms: ``site["infer"]["chain"]``)."""
    return {site["infer"]["chain"]: site["infer"]["bound_terms"]
            for site in trace.nodes.values() if site["type"] == "sample" and "bound_terms" in site["infer"]}


class DiffusionChain(nn.Module):
    """A variational diffusion over ``likelihood``'s variable, usable inside any Pyro model/guide.

    Args:
        denoiser: the shared x̂θ(z_t; γ_t), an :class:`~hlvm.diffusion.denoiser.XPredictor`
            (a :class:`~hlvm.Denoiser`, or :class:`~hlvm.GaussianOracle` for exact tests).
        schedule: a :class:`~hlvm.diffusion.schedules.NoiseSchedule`.
        likelihood: a :class:`~hlvm.programs.likelihoods.Likelihood` giving p(y | z_0) via ``from_z0``.
        T: number of discrete steps, or None for continuous time.
        name: prefix of the latent sites (``{name}_{i}`` at t = i/T, i = T..0).
        trace_steps: for continuous time, the number of steps the *Pyro program* uses under
            stock ELBOs, for rendering and for sampling the program forward.

    .. warning:: In continuous time the stock-Pyro program is the ``trace_steps``-step
        discretization of the same model: a valid but looser ELBO than the continuous L_∞
        that :class:`~hlvm.DiffusionELBO` estimates.
    """

    def __init__(self, denoiser: nn.Module, schedule: nn.Module, likelihood: Likelihood, T: int | None = None,
                 name: str = "z", trace_steps: int = 4):
        super().__init__()
        check_T(T)
        if trace_steps < 1:
            raise ValueError(f"trace_steps must be >= 1, got {trace_steps}")
        self.denoiser, self.schedule, self.likelihood = denoiser, schedule, likelihood
        self.T, self.name, self.trace_steps = T, name, trace_steps
        self._check_grid(T, "T")

    def _check_grid(self, steps, what):
        """A schedule defined on a grid (DDPM's N β's: N − 1 steps) is used on sub-grids only."""
        defined = getattr(self.schedule, "discrete_steps", None)
        if defined is not None and (steps is None or defined % steps):
            allowed = [k for k in range(1, defined + 1) if defined % k == 0]
            raise ValueError(f"{what}={steps} does not fit {type(self.schedule).__name__}, which defines noise levels "
                             f"at {defined} steps only; use a divisor of {defined} ({allowed}) so every level is "
                             "one of the schedule's own (no interpolation)")

    def _sampling_steps(self, steps: int | None) -> int:
        """The sampler's grid: ``steps`` (an integer >= 1 that fits the schedule), default T, or 1000
        in continuous time."""
        steps = (self.T if self.T is not None else 1000) if steps is None else check_int("steps", steps, 1)
        self._check_grid(steps, "steps")
        return steps

    @property
    def steps(self) -> int:
        """Steps of the Pyro program: T, or ``trace_steps`` in continuous time."""
        return self.T if self.T is not None else self.trace_steps

    @property
    def event_shape(self):
        return self.likelihood.event_shape

    def site_names(self, steps: int | None = None):
        """Latent site names from the top (z_1, noisiest) down to z_0: ``z_T, …, z_0``."""
        return list(self.site_index(steps))

    def site_index(self, steps: int | None = None) -> dict[str, int]:
        """{site name: i} of the latents z_{i/T}, from the top (i = steps) down to 0."""
        steps = steps or self.steps
        return {step_site(self.name, i): i for i in range(steps, -1, -1)}

    def _ref(self, y=None) -> torch.Tensor:
        """A floating tensor with the chain's dtype and device (y, else its first parameter or buffer)."""
        if y is not None:
            return y if torch.is_floating_point(y) else y.float()
        for m in (self.denoiser, self.schedule):
            if isinstance(m, nn.Module):
                for t in itertools.chain(m.parameters(), m.buffers()):
                    return t if torch.is_floating_point(t) else t.float()
        return torch.zeros(())

    def _std_normal(self, batch: int, like: torch.Tensor):
        zeros = torch.zeros((batch,) + self.event_shape, dtype=like.dtype, device=like.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(len(self.event_shape))

    # ----------------------------------------------------------------- the Pyro program
    def model(self, y_name: str, y: torch.Tensor | None = None, batch_size: int | None = None):
        """The generative chain and p(y | z_0); observes ``y`` when given. Returns y."""
        if y is not None:
            self.likelihood.check(y)
            batch_size = y.shape[0]
        if collapsed():
            return self._model_collapsed(y_name, y, batch_size)
        if batch_size is None:
            raise ValueError("DiffusionChain.model needs y or batch_size")
        ref = self._ref(y)
        steps, e = self.steps, len(self.event_shape)
        g = sampling.grid(self.schedule, steps, ref)
        z = pyro.sample(step_site(self.name, steps), self._std_normal(batch_size, ref))
        for i in range(steps, 0, -1):
            z = pyro.sample(step_site(self.name, i - 1), p_zs_given_zt(self.denoiser, z, g[i - 1], g[i]).to_event(e))
        obs = None if y is None else self.likelihood.observe(y)
        return pyro.sample(y_name, self.likelihood.from_z0(z, g[0]), obs=obs)

    def guide(self, y: torch.Tensor):
        """The fixed top-down posterior q(z_1 | y) ∏ q(z_s | z_t, y) (nothing when collapsed)."""
        if collapsed():
            return None
        x = self.likelihood.to_model_space(y)
        steps, e = self.steps, len(self.event_shape)
        g = sampling.grid(self.schedule, steps, x)
        z = pyro.sample(step_site(self.name, steps), q_zt_given_x(x, g[steps]).to_event(e))
        for i in range(steps, 0, -1):
            z = pyro.sample(step_site(self.name, i - 1), q_zs_given_zt_x(z, x, g[i - 1], g[i]).to_event(e))
        return z

    def _model_collapsed(self, y_name, y, batch_size):
        shape, event = torch.Size(() if batch_size is None else (batch_size,)), torch.Size(self.event_shape)
        # y's own site: observed data, or a latent whose value is replayed from the guide
        y = pyro.sample(y_name, dist.ImproperUniform(dist.constraints.real, shape, event), obs=y)
        terms = _bound(self, y)
        factor = dist.Unit(-terms.loss)  # pyro.factor, carrying the terms with the site
        infer = {"is_auxiliary": True, "chain": self.name, "bound_terms": terms}
        pyro.sample(bound_site(self.name), factor, obs=factor.sample(), infer=infer)
        return y

    # ----------------------------------------------------------------- samplers (hlvm.diffusion.sampling)
    def sample(self, n: int, steps: int | None = None, generator=None, return_mean: bool = False, like=None):
        """Ancestral samples of y on a ``steps`` grid (default T; 1000 in continuous time)."""
        check_int("n", n, 1)
        steps = self._sampling_steps(steps)
        return sampling.ancestral_sample(self.denoiser, self.schedule, self.likelihood, n, steps, self._ref(like),
                                         generator=generator, return_mean=return_mean)

    def reconstruct(self, y: torch.Tensor, t: float = 0.3, steps: int | None = None, generator=None):
        """Noise y to level t, then run the generative chain back to p(y | z_0)'s mean."""
        check_float("t", t, 0.0, 1.0)
        steps = self._sampling_steps(steps)
        return sampling.noise_and_denoise(self.denoiser, self.schedule, self.likelihood, y, t, steps, generator)

    def langevin_sample(self, n: int, steps: int = 100, corrector_steps: int = 1, snr: float = 0.16,
                        generator=None, return_mean: bool = False, like=None):
        """Predictor–corrector annealed Langevin sampling (:func:`hlvm.diffusion.sampling.langevin_sample`)."""
        check_int("n", n, 1)
        check_int("corrector_steps", corrector_steps, 0)
        self._check_grid(check_int("steps", steps, 1), "steps")
        return sampling.langevin_sample(self.denoiser, self.schedule, self.likelihood, n, steps, self._ref(like),
                                        corrector_steps, snr, generator=generator, return_mean=return_mean)


def chains_of(*roots) -> list[DiffusionChain]:
    """The DiffusionChains inside the given modules (each once, in module order)."""
    out: list[DiffusionChain] = []
    for root in roots:
        if isinstance(root, nn.Module):
            out += [m for m in root.modules() if isinstance(m, DiffusionChain) and all(m is not c for c in out)]
    return out


@contextmanager
def override_steps(chains, policy):
    """Run the program with each chain at ``policy(steps)`` steps (T, or ``trace_steps`` in
    continuous time); restored on exit.  Yields {chain name: {"T", "steps", "traced_steps", "sites"}},
    ``sites`` the {site name: i} of the traced chain (:meth:`DiffusionChain.site_index`)."""
    saved, info = [], {}
    try:
        for chain in chains:
            steps = policy(chain.steps)
            info[chain.name] = {"T": chain.T, "steps": chain.steps, "traced_steps": steps, "sites": chain.site_index(steps)}
            saved.append((chain, chain.T, chain.trace_steps))
            if chain.T is None:
                chain.trace_steps = steps
            else:
                chain.T = steps
        yield info
    finally:
        for chain, T, trace_steps in saved:
            chain.T, chain.trace_steps = T, trace_steps


def latent_likelihood(event_shape) -> GaussianLikelihood:
    """p(y | z_0) = N(y; z_0/α_0, σ_0²/α_0²) for a continuous latent y under a diffusion prior."""
    return GaussianLikelihood(event_shape)
