"""A recorded SVI step: the ELBO's loss and gradients replayed as one tensor program.

For fixed input shapes the trace of a hierarchy's model and guide has a fixed structure — the
same sites, distributions, plates and analytic KL terms at every step — and only the tensors
flowing through it change.  Pyro nevertheless rebuilds that structure each step (messengers,
site dictionaries, plate broadcasting, parameter registration), which costs thousands of Python
calls per step.  :class:`RecordedLoss` runs the ELBO once under
:func:`torch.fx.experimental.proxy_tensor.make_fx`, which records every tensor operation of the
forward *and* backward pass — Pyro's bookkeeping runs only during that recording — with the
parameters as inputs.  Replaying the record is then a flat sequence of ATen calls, random draws
included, in the same order: at the same seed it returns exactly Pyro's loss and gradients.

Safeguards (each a one-line notice and Pyro's own step from then on):

* every ``check_every`` calls, and on the first call of each new input signature, the step is
  computed both ways from the same random state and compared (to rounding);
* a record is refused if a parameter would be baked in as a constant (one the recorder cannot
  reach), if it mutates state (running statistics), or if the guide has non-reparameterized sites
  (whose surrogate loss is not the ELBO);
* an importance time sampler's history is the one state a step legitimately writes: the record
  returns the sampler's inputs (:func:`hlvm.diffusion.timesteps.deferred_updates`) and the update
  runs after each replay, outside the graph — so VDM's recipe records too;
* a new input shape, dtype or device records again (a per-signature cache).

The two places where recording needs Pyro's private state are isolated in
:mod:`hlvm.training.pyro_internals` (and tested against Pyro there).

References: Bingham et al., *Pyro: Deep Universal Probabilistic Programming*, JMLR 2019 (the
ELBO being replayed); Reed et al., *torch.fx*, MLSys 2022 (the program capture).

.. warning:: The record fixes everything that is not a tensor input: Python-side randomness,
    a KL weight that changes per step (use it during warm-up only with Pyro's step — the
    Trainer does), or control flow on parameter values.  The periodic check catches a record
    that has gone stale; ``check_every=1`` checks every step.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.util import zero_grads
from pyro.poutine.util import prune_subsample_sites

from ..diffusion.timesteps import deferred_updates
from .checkpoints import rng_state, set_rng_state
from .pyro_internals import ParamSlots, without_readouts

__all__ = ["RecordedLoss", "CompiledSVI", "compile_step"]


@contextlib.contextmanager
def _random_state_kept():
    """Draws made inside (recording, probing the guide) leave every random stream — CPU, CUDA,
    Python, NumPy — as it was, so a compiled run draws exactly what Pyro's run draws."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _signature(args, kwargs):
    def sig(v):
        return (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else ("py", repr(v))
    return tuple(sig(a) for a in args), tuple((k, sig(v)) for k, v in sorted(kwargs.items()))


def _mutates_state(graph: torch.fx.GraphModule) -> bool:
    """Whether the record writes into a tensor it does not own (a buffer, a sampler's history)."""
    for node in graph.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            if any(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in node.args):
                return True
    return False


class RecordedLoss:
    """``(loss, params, grads)`` of ``elbo.differentiable_loss(model, guide, *args)``, replayed.

    :param model: the model program.
    :param guide: the guide program.
    :param elbo: a Pyro ELBO (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``DiffusionELBO``, ...).
    :param int check_every: compare against Pyro's own computation every this many calls.
    :param log: where the one-line notices go (default: ``warnings.warn``).
    :param float rtol: relative tolerance of the comparison.
    :param bool cuda_graph: also capture each record in a CUDA graph (:class:`_CudaGraphStep`), so a
        step is one graph launch; the inputs must be CUDA tensors of a fixed shape.

    .. warning:: ``cuda_graph`` has not run on a GPU in this project yet (no device was lent); the
        first-replay check against Pyro decides whether it is used.
    """

    def __init__(self, model: Callable, guide: Callable, elbo, check_every: int = 100, log=None, rtol: float = 1e-5,
                 cuda_graph: bool = False):
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
        if cuda_graph and not torch.cuda.is_available():
            raise ValueError("cuda_graph=True needs a CUDA device, and CUDA is not available on this machine")
        self.cuda_graph = cuda_graph
        self.model, self.guide, self.elbo = model, guide, elbo
        self.check_every, self.rtol = check_every, rtol
        self.log = log or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3))
        self.records: dict = {}
        self.calls = 0
        self.fallback: str | None = None  # why the step is Pyro's (None: it is replayed)
        self._pending_check = False  # check the first replay of a new record

    # -- Pyro's own step ----------------------------------------------------------------------
    def pyro_loss_and_grads(self, *args, **kwargs):
        """Pyro's step: (loss, params, grads), params captured as :class:`pyro.infer.SVI` does."""
        with poutine.trace(param_only=True) as tr:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        params = list({id(s["value"].unconstrained()): s["value"].unconstrained() for s in tr.trace.nodes.values()}.values())
        params = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        return loss.detach(), params, grads

    def _give_up(self, why: str):
        self.fallback = why
        self.log(f"hlvm.training.compile: {why}; using Pyro's step from here on")

    # -- recording ------------------------------------------------------------------------------
    def _modules(self):
        seen = {}
        for fn in (self.model, self.guide):
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, torch.nn.Module):
                for m in owner.modules():
                    seen[id(m)] = m
        return list(seen.values())

    def _record(self, params, args, kwargs):
        from torch.fx.experimental.proxy_tensor import make_fx

        slots = ParamSlots(params, self._modules())
        if len(slots.reached) < len(params):
            return None, f"{len(params) - len(slots.reached)} parameter(s) live outside the hierarchy's modules and the param store"
        elbo, model, guide = self.elbo, self.model, self.guide

        samplers: list = []  # the time samplers whose history updates the record returns (deferred_updates)

        def step(ps, a):
            with slots.swapped(ps), pyro.validation_enabled(False), without_readouts(), deferred_updates() as pending:
                loss = elbo.differentiable_loss(model, guide, *a, **kwargs)
            grads = torch.autograd.grad(loss, ps, allow_unused=True)
            samplers[:] = [s for s, _, _ in pending]
            updates = [v for _, t, term in pending for v in (t, term)]
            return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(ps, grads)], updates

        inputs = [p.detach().requires_grad_(True) for p in params]
        try:
            with _random_state_kept(), poutine.block():  # the recording's sites (stand-ins) stay private
                graph = make_fx(step)(inputs, list(args))
        except Exception as e:  # noqa: BLE001 - any failure to record means: use Pyro
            return None, f"the step cannot be recorded ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        constants = {id(v) for v in graph.__dict__.values() if isinstance(v, torch.Tensor)}
        constants |= {id(b) for b in graph.buffers()} | {id(p) for p in graph.parameters()}
        if any(id(p) in constants for p in params):
            return None, "a parameter was recorded as a constant"
        if _mutates_state(graph):
            return None, "the step mutates state (buffers or sampler history)"
        # Pyro's reporting arithmetic (the non-surrogate ELBO) feeds nothing returned: drop it.
        # Random draws all feed the loss, so the random stream is unchanged (the first replay checks it).
        graph.graph.eliminate_dead_code()
        graph.recompile()
        graph.samplers = list(samplers)
        return graph, None

    def _reparameterized(self, *args, **kwargs) -> bool:
        with poutine.block():
            tr = prune_subsample_sites(poutine.trace(self.guide).get_trace(*args, **kwargs))
        return all(s["fn"].has_rsample or s["is_observed"] for s in tr.nodes.values()
                   if s["type"] == "sample" and not s.get("infer", {}).get("is_auxiliary"))

    # -- the step ---------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fallback is not None:
            return self.pyro_loss_and_grads(*args, **kwargs)
        key = _signature(args, kwargs)
        if key not in self.records:
            loss, params, grads = self.pyro_loss_and_grads(*args, **kwargs)  # also registers the parameters
            with _random_state_kept():
                reparameterized = self._reparameterized(*args, **kwargs)
            if not reparameterized:
                self._give_up("the guide has non-reparameterized sites")
                return loss, params, grads
            graph, why = self._record(params, args, kwargs)
            if graph is None:
                self._give_up(why)
                return loss, params, grads
            if self.cuda_graph:
                graph = _CudaGraphStep(graph, params, args)
            self.records[key] = (graph, params)
            self._pending_check = True
            return loss, params, grads
        graph, params = self.records[key]
        check = self._pending_check or self.calls % self.check_every == 0
        self._pending_check = False
        if check:
            state = rng_state()
        with torch.no_grad():  # the record computes the gradients itself
            loss, grads, updates = graph(params, list(args))
        if not check:  # the time samplers' history, written here rather than by the graph (Pyro's step writes it on checks)
            for sampler, t, term in zip(graph.samplers, updates[0::2], updates[1::2]):
                sampler.update(t, term)
        if check:
            set_rng_state(state)
            ref_loss, ref_params, ref_grads = self.pyro_loss_and_grads(*args, **kwargs)
            if not self._agree(loss, grads, ref_loss, ref_grads, params, ref_params):
                self._give_up("the recorded step no longer matches Pyro's")
            return ref_loss, ref_params, ref_grads
        return loss, params, grads

    def _agree(self, loss, grads, ref_loss, ref_grads, params, ref_params) -> bool:
        if {id(p) for p in params} != {id(p) for p in ref_params}:
            return False
        ref = {id(p): g for p, g in zip(ref_params, ref_grads)}
        ok = torch.allclose(loss, ref_loss, rtol=self.rtol, atol=self.rtol)
        for p, g in zip(params, grads):
            r = ref[id(p)]
            ok = ok and torch.allclose(g, r, rtol=self.rtol, atol=self.rtol * (float(r.abs().max()) + 1e-12))
        return bool(ok)


class _CudaGraphStep:
    """A record captured in a CUDA graph: static input buffers, one ``replay()`` per step.

    The parameters are read in place (the optimizer updates them in place); the batch is copied
    into the captured input buffers; random draws use the graph-safe Philox generator that
    :func:`torch.cuda.graph` registers.  Outputs are copied out, since the next replay overwrites
    them (and gradient shards accumulate)."""

    def __init__(self, graph, params, args, warmup: int = 3):
        if not all(isinstance(a, torch.Tensor) and a.is_cuda for a in args) or not all(p.is_cuda for p in params):
            raise ValueError("cuda_graph=True needs the parameters and the batch on a CUDA device")
        self.inputs = [a.clone() for a in args]
        self.samplers = graph.samplers
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # allocations and lazy initialisation happen outside the capture
                graph(params, self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.outputs = graph(params, self.inputs)

    def __call__(self, params, args):
        for buffer, a in zip(self.inputs, args):
            buffer.copy_(a)
        self.graph.replay()
        loss, grads, updates = self.outputs
        return loss.clone(), [g.clone() for g in grads], [u.clone() for u in updates]


class CompiledSVI:
    """:class:`pyro.infer.SVI` with a recorded step: ``step(*args)`` returns the loss and updates
    the parameters with ``optim`` exactly as ``SVI.step`` does, the loss and gradients coming from
    a :class:`RecordedLoss`.  ``evaluate_loss`` is Pyro's."""

    def __init__(self, model, guide, optim, loss, check_every: int = 100, log=None, cuda_graph: bool = False):
        self.model, self.guide, self.optim, self.loss = model, guide, optim, loss
        self.recorded = RecordedLoss(model, guide, loss, check_every=check_every, log=log, cuda_graph=cuda_graph)

    def step(self, *args, **kwargs) -> float:
        loss, params, grads = self.recorded(*args, **kwargs)
        for p, g in zip(params, grads):  # each replay returns fresh gradient tensors
            p.grad = g if p.grad is None else p.grad + g
        self.optim(params)
        zero_grads(params)
        return float(loss)

    @torch.no_grad()
    def evaluate_loss(self, *args, **kwargs) -> float:
        return float(self.loss.loss(self.model, self.guide, *args, **kwargs))


def compile_step(model, guide, elbo, optim, check_every: int = 100, log=None, cuda_graph: bool = False) -> CompiledSVI:
    """An SVI whose step is recorded once per input signature and replayed (see module docs);
    ``cuda_graph=True`` also captures it in a CUDA graph."""
    return CompiledSVI(model, guide, optim, elbo, check_every=check_every, log=log, cuda_graph=cuda_graph)
