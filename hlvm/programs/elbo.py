"""``DiffusionELBO``: Pyro's ``Trace_ELBO`` with every diffusion chain collapsed analytically.

Sites outside diffusion chains are handled exactly as ``Trace_ELBO`` handles them, so the
estimator works for any hierarchy that uses :class:`~hlvm.programs.chain.DiffusionChain` — the
zoo's ``VDM`` and user-written models alike.  Each chain over y contributes the factor −L(y) of
:func:`hlvm.diffusion.bound.diffusion_bound` (Kingma et al. 2021, eqs. 11–17): one (or ``num_t``)
timesteps per example, all in ONE batched denoiser call, so a step costs the same for T = 10 and
T = 10⁴.  ``exact=True`` (evaluation) averages over all T steps instead.

The ELBO traces model and guide under :class:`CollapseChains`, the Pyro effect handler that
answers the chains' two questions (am I collapsed? what is my bound?).

References:
    Kingma, Salimans, Poole, Ho. *Variational Diffusion Models*. NeurIPS 2021, §3–4, App. I.
    Kingma, Gao. *Understanding Diffusion Objectives as the ELBO with Simple Data Augmentation*. 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBOModule
from pyro.poutine.messenger import Messenger
from torch import nn

from ..diffusion.bound import BoundTerms, diffusion_bound
from ..diffusion.schedules import InteriorSchedule
from ..diffusion.timesteps import TimestepSampler
from ..diffusion.weighting import get_weighting, is_monotone
from ..validate import check_int
from .chain import bound_terms

__all__ = ["DiffusionELBO", "CollapseChains", "SamplerKey"]


@dataclass(frozen=True)
class SamplerKey:
    """Which timestep sampler: one per chain (its name) and number of steps (None: continuous time)."""

    chain: str
    T: int | None


class CollapseChains(Messenger):
    """Effect handler under which every DiffusionChain collapses into ``elbo``'s analytic bound."""

    def __init__(self, elbo: "DiffusionELBO"):
        super().__init__()
        self.elbo = elbo

    def _pyro_hlvm_collapsed(self, msg):
        msg["value"], msg["done"], msg["stop"] = True, True, True

    def _pyro_hlvm_diffusion_bound(self, msg):
        chain, y = msg["args"]
        msg["value"], msg["done"], msg["stop"] = self.elbo.chain_bound(chain, y), True, True


class DiffusionELBO(Trace_ELBO):
    """An ELBO that evaluates diffusion chains analytically (see module docstring).

    Args:
        sampler: ``"uniform"``, ``"antithetic"`` (low-discrepancy; default) or ``"importance"``.
        num_t: timesteps drawn per example (the denoiser runs once on batch × num_t).
        exact: average all T terms (discrete time) or ``eval_nodes`` stratified nodes
            (continuous time) instead of sampling timesteps — for evaluation.
        weighting: ``"elbo"`` (w ≡ 1) or a weighting of :mod:`hlvm.diffusion.weighting`.
        eval_nodes: nodes of the continuous-time quadrature when ``exact`` (default 1000).
        max_batch: largest denoiser batch used by ``exact``.
        schedule_objective: ``"elbo"`` (every schedule parameter follows the ELBO) or
            ``"variance"``: a learned monotone schedule's interior minimises the variance of the
            continuous-time diffusion loss while its endpoints follow the ELBO (VDM §5, App. I.1;
            the loss value is unchanged: only the schedule interior's gradient differs), or
            ``"auto"``: ``"variance"`` for each continuous-time chain whose schedule has a learned
            interior, ``"elbo"`` for the others (a default that holds for any T and schedule).
        **kwargs: passed to :class:`pyro.infer.Trace_ELBO` (``num_particles``, …).

    The per-example terms of each chain come back with the trace: :meth:`bound_terms`.

    .. warning:: With ``weighting`` other than ``"elbo"`` the objective is *not* an ELBO
        (:attr:`is_elbo` is False); report it as a weighted loss.
    """

    def __init__(self, sampler: str = "antithetic", num_t: int = 1, exact: bool = False,
                 weighting: str = "elbo", eval_nodes: int = 1000, max_batch: int = 8192,
                 schedule_objective: str = "elbo", **kwargs):
        super().__init__(**kwargs)
        if schedule_objective not in ("elbo", "variance", "auto"):
            raise ValueError(f"unknown schedule_objective {schedule_objective!r}; expected 'elbo', 'variance' or 'auto'")
        self.schedule_objective = schedule_objective
        for name, value in (("num_t", num_t), ("eval_nodes", eval_nodes), ("max_batch", max_batch)):
            check_int(name, value, 1)
        self.sampler_kind = sampler
        TimestepSampler(sampler)  # validates the name now
        self.num_t, self.exact, self.eval_nodes, self.max_batch = num_t, exact, eval_nodes, max_batch
        self.weighting_name = weighting
        self.weighting = get_weighting(weighting)
        self.samplers: dict[SamplerKey, TimestepSampler] = {}

    def __call__(self, model, guide) -> ELBOModule:
        """This ELBO as an ``nn.Module`` computing the loss of ``model``/``guide`` (for ``torch.optim``).

        Pyro's ``ELBO.__call__`` finds parameters only on a model and guide that are modules
        themselves; ``vdm.model`` and ``vdm.guide`` are methods, so the modules they are bound to
        are registered too and ``DiffusionELBO()(vdm.model, vdm.guide).parameters()`` holds the
        model's parameters (with ``pyro.settings.set(module_local_params=True)``, as Pyro asks).
        """
        module = super().__call__(model, guide)
        owners = [getattr(f, "__self__", None) for f in (model, guide)]
        owners = [o for i, o in enumerate(owners) if isinstance(o, nn.Module) and all(o is not p for p in owners[:i])]
        module.owners = nn.ModuleList(owners)
        return module

    def for_evaluation(self) -> "DiffusionELBO":
        """This bound for scoring: itself, or — when it draws t by importance — the same bound with
        antithetic times.  An importance sampler's proposal follows its training history (and is
        updated by what it scores); an evaluation should depend on the model alone, and the
        antithetic estimator's weights are all 1 (no heavy tail)."""
        if self.sampler_kind != "importance":
            return self
        return DiffusionELBO(sampler="antithetic", num_t=self.num_t, exact=self.exact, weighting=self.weighting_name,
                             eval_nodes=self.eval_nodes, max_batch=self.max_batch,
                             num_particles=self.num_particles, max_plate_nesting=self.max_plate_nesting)

    @property
    def is_elbo(self) -> bool:
        """True only for the identity weighting."""
        return self.weighting is None

    @property
    def is_augmented_elbo(self) -> bool:
        """True when w is monotone: an ELBO of noise-augmented data (Kingma & Gao 2023)."""
        return is_monotone(self.weighting_name)

    def collapse(self) -> CollapseChains:
        """The handler to run a program under for it to see chains as this ELBO does."""
        return CollapseChains(self)

    # -- Pyro hooks: every trace is taken with the chains collapsed ----------------------
    def _get_trace(self, model, guide, args, kwargs):
        with self.collapse():
            return super()._get_trace(model, guide, args, kwargs)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        with self.collapse():
            return super()._guess_max_plate_nesting(model, guide, args, kwargs)

    # -- the bound of one chain ------------------------------------------------------------
    def sampler_for(self, chain) -> TimestepSampler:
        """The timestep sampler of ``chain`` (one per chain name and T, created on first use)."""
        key = SamplerKey(chain.name, chain.T)
        if key not in self.samplers:
            self.samplers[key] = TimestepSampler(self.sampler_kind, chain.T)
        return self.samplers[key]

    def chain_bound(self, chain, y) -> BoundTerms:
        """Per-example terms of −log p(y) ≤ loss for one chain (asked for by the chain).

        This ELBO owns the timestep samplers: after a Monte Carlo bound it records the drawn
        terms in the chain's sampler (the importance sampler's history; a no-op for the others).
        """
        sampler = None if self.exact else self.sampler_for(chain).to(y.device)
        terms = diffusion_bound(chain.denoiser, chain.schedule, chain.likelihood, chain.T, y, sampler=sampler,
                                num_t=self.num_t, exact=self.exact, nodes=self.eval_nodes,
                                weighting=self.weighting, max_batch=self.max_batch,
                                variance_schedule=self._variance_objective(chain))
        if sampler is not None:
            sampler.update(terms.t, terms.per_t)
        return terms

    def _variance_objective(self, chain) -> bool:
        """Whether ``chain``'s schedule interior trains on the loss variance (``schedule_objective``)."""
        if self.schedule_objective == "auto":
            return chain.T is None and isinstance(chain.schedule, InteriorSchedule)
        return self.schedule_objective == "variance"

    def bound_terms(self, model, guide, *args, **kwargs) -> dict[str, BoundTerms]:
        """{chain name: BoundTerms} from one draw: the guide traced and the model replayed on it."""
        with self.collapse():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return {name: terms.detach() for name, terms in bound_terms(model_trace).items()}

    # -- checkpoints: the importance sampler's history ------------------------------------
    def state_dict(self) -> dict:
        """{"samplers": [{"chain", "T", "state"}, ...]}: plain types, one record per sampler."""
        return {"samplers": [{"chain": k.chain, "T": k.T, "state": s.state_dict()} for k, s in self.samplers.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the samplers of :meth:`state_dict` (or of a checkpoint written before the typed
        keys: :func:`_records_of_legacy_state`), so a resumed run keeps its importance history."""
        if isinstance(state, dict) and "samplers" not in state:
            state = {"samplers": _records_of_legacy_state(state)}
        if not isinstance(state, dict) or not isinstance(state.get("samplers"), list):
            raise ValueError("not a DiffusionELBO state: expected {'samplers': [{'chain', 'T', 'state'}, ...]}")
        for record in state["samplers"]:
            key = SamplerKey(record["chain"], record["T"])
            self.samplers.setdefault(key, TimestepSampler(self.sampler_kind, key.T)).load_state_dict(record["state"])


def _records_of_legacy_state(state: dict) -> list[dict]:
    """The sampler records of a state written before :class:`SamplerKey` existed, when samplers
    were keyed by the text ``"{chain}/T={T}"``: read once, when such a checkpoint is resumed; the
    key text is written by nothing any more."""
    records = []
    for key, sampler_state in state.items():
        chain, sep, T = key.rpartition("/T=") if isinstance(key, str) else ("", "", "")
        if not sep or not (T == "None" or T.isdigit()):
            raise ValueError(f"not a DiffusionELBO state: unknown sampler key {key!r}")
        records.append({"chain": chain, "T": None if T == "None" else int(T), "state": sampler_state})
    return records
