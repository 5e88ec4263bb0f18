"""One training step, recorded: the per-shard seeded loss of a global batch, the update, and the
:class:`StepRecord` of what the step used and did.

* **Seeded shards.** A global batch is cut into ``world × grad_shards`` shards; shard ``i`` of
  step ``s`` draws its latents from its own stream, seeded by :func:`shard_seed` ``(seed, s, i)``.
  So a step's randomness depends on nothing but the run's seed and the step's number: a run resumed
  from a checkpoint, or run on N processes, reproduces the losses of one uninterrupted process.
* **KL warm-up.** The step's β (:func:`hlvm.training.anneal.warmup_beta` of the step's number)
  scales the latent sites of model and guide (:class:`hlvm.training.anneal.ScaleLatents`) and is
  recorded as such.
* **A guard before the update.** A non-finite loss, or (unless update skipping handles it) a
  non-finite gradient, stops the step before the optimizer runs (:class:`NonFiniteStep`), so no NaN
  ever reaches the parameters.  The global gradient norm of that check is the one recorded.
* **The record.** Everything the monitor and the metrics file report about a step comes from its
  :class:`StepRecord`, returned by :meth:`SVIStep.step`: loss, gradient norm, β, whether the update
  was skipped, learning rate and time.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from pyro import poutine
from pyro.infer.util import zero_grads

from .anneal import ScaleLatents, warmup_beta
from .parallel import Processes, sum_over_ranks

__all__ = ["StepRecord", "Gradients", "NonFiniteStep", "shard_seed", "ShardedLoss", "SVIStep"]


@dataclass(frozen=True)
class StepRecord:
    """What one training step used and did.

    :param int step: the step's number, counted from 1 (the number of updates done after it).
    :param float loss: the training objective on the step's batch, nats per example (with β < 1 or
        free bits, the objective, not the negative ELBO).
    :param float grad_norm: the global gradient norm before clipping (NaN if nothing had a gradient).
    :param float beta: the KL weight β the step's loss used.
    :param bool skipped: the update was skipped (``skip_norm``): the parameters did not change.
    :param float lr: the learning rate of the update.
    :param float seconds: wall-clock seconds of the step, as timed by its caller (NaN if untimed).
    """

    step: int
    loss: float
    grad_norm: float
    beta: float
    skipped: bool
    lr: float
    seconds: float = float("nan")


@dataclass(frozen=True)
class Gradients:
    """What a loss-and-gradients pass leaves for the update.

    :param float loss: the loss summed over the shards (and ranks) of the global batch, in nats.
    :param float norm: the global norm of the gradients, or NaN when it was not computed (update
        skipping computes its own).
    :param tuple replayed: the parameters given gradients by a replayed record
        (:class:`hlvm.training.compile.RecordedLoss`): no ``pyro.param`` statement ran for them, so
        SVI's parameter capture does not see them.
    """

    loss: float
    norm: float
    replayed: tuple = ()


class NonFiniteStep(Exception):
    """Raised inside a step, before the optimizer runs, when the loss or a gradient is not finite."""


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of shard ``shard`` of step ``step`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + step * 7919 + shard * 104_729) % (2**63 - 1)


class ShardedLoss:
    """The objective of one global batch: each local shard's under its own seeded stream, summed
    over the shards and (:func:`hlvm.training.parallel.sum_over_ranks`) over the ranks.

    :param estimator: the training objective, a Pyro ELBO.
    :param module: the ``torch.nn.Module`` whose parameters are trained (gradient sum and check).
    :param Processes processes: this process's place in the run.
    :param int grad_shards: shards per process.
    :param int seed: the run's seed.
    :param bool amp: bf16 autocast on CUDA.
    :param recorded: a :class:`~hlvm.training.compile.RecordedLoss` replayed when β = 1 (or None).
    :param bool guard_gradients: check the gradients' finiteness (off when update skipping will).
    """

    def __init__(self, estimator, module: torch.nn.Module, processes: Processes, grad_shards: int, seed: int,
                 amp: bool = False, recorded=None, guard_gradients: bool = True):
        self.estimator, self.module, self.processes = estimator, module, processes
        self.grad_shards, self.seed, self.amp = grad_shards, seed, amp
        self.recorded, self.guard_gradients = recorded, guard_gradients

    def shards(self, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """This process's shards of the global batch ``x``, each with its index in the global batch."""
        parts = x.chunk(self.processes.world * self.grad_shards)
        first = self.processes.rank * self.grad_shards
        return [(first + k, parts[first + k]) for k in range(self.grad_shards)]

    def _shard(self, model, guide, index: int, xs, step: int, beta: float):
        """(loss as float64, parameters given gradients by a replay) of one shard at KL weight ``beta``."""
        devices = [self.processes.device] if self.processes.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(shard_seed(self.seed, step, index))
            scaled = ScaleLatents(beta) if beta < 1.0 else nullcontext()
            with scaled, torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp):
                if self.recorded is not None and beta == 1.0 and not self.amp:
                    loss, params, grads = self.recorded(xs)
                    for p, g in zip(params, grads):  # accumulate over shards, as backward() would
                        p.grad = g if p.grad is None else p.grad + g
                    return loss.detach().double(), tuple(params)
                loss = self.estimator.differentiable_loss(model, guide, xs)
                loss.backward()
                return loss.detach().double(), ()

    def loss_and_grads(self, model, guide, x: torch.Tensor, step: int, beta: float) -> Gradients:
        """The loss at KL weight ``beta`` and its gradients (accumulated into ``.grad``); raises
        :class:`NonFiniteStep` if either is not finite."""
        total, replayed = 0, ()
        for i, xs in self.shards(x):
            loss, params = self._shard(model, guide, i, xs, step, beta)
            total, replayed = total + loss, replayed + params
        if self.processes.world > 1:
            total = sum_over_ranks([p for p in self.module.parameters() if p.requires_grad], total,
                                   self.processes.device)
        loss = total.item()
        return Gradients(loss, self._checked_norm(loss), replayed)

    def _checked_norm(self, loss: float) -> float:
        """The global gradient norm (NaN when not computed), after checking that the loss and the
        gradients are finite."""
        if not math.isfinite(loss):
            raise NonFiniteStep(f"loss became {loss}")
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not self.guard_gradients or not grads:
            return float("nan")
        # one pass and one sync: the global norm; a finite norm means finite gradients, and only a
        # non-finite one (NaN, inf, or an overflow of the squares) needs the exact per-tensor check
        norm = float(torch.nn.utils.get_total_norm(grads))
        if not math.isfinite(norm) and not all(bool(torch.isfinite(g).all()) for g in grads):
            raise NonFiniteStep(f"gradient became non-finite (loss {loss:.6g})")
        return norm


class SVIStep:
    """One stochastic-variational update on a global batch, as :meth:`pyro.infer.SVI.step` makes it
    (parameters captured with ``poutine.trace(param_only=True)``, one optimizer call, gradients
    zeroed), returning its :class:`StepRecord` instead of a bare loss.

    :param model: the model program.
    :param guide: the guide program.
    :param optim: a :class:`~hlvm.training.optim.SingleOptim`.
    :param ShardedLoss objective: the per-shard seeded objective.
    :param int kl_warmup: steps of KL warm-up (0: β = 1 throughout).
    :param clock: returns the number of updates done so far (the trainer's step counter): it seeds
        the step's shards and gives its β.
    """

    def __init__(self, model, guide, optim, objective: ShardedLoss, kl_warmup: int, clock: Callable[[], int]):
        self.model, self.guide, self.optim, self.objective = model, guide, optim, objective
        self.kl_warmup, self.clock = kl_warmup, clock

    def step(self, x: torch.Tensor) -> StepRecord:
        """One update on the global batch ``x``; the record of the step."""
        done = self.clock()
        beta = warmup_beta(done, self.kl_warmup)
        with poutine.trace(param_only=True) as capture:
            grads = self.objective.loss_and_grads(self.model, self.guide, x, done, beta)
        params = {s["value"].unconstrained() for s in capture.trace.nodes.values()} | set(grads.replayed)
        update = self.optim(params)
        zero_grads(params)
        norm = grads.norm if update.grad_norm is None else update.grad_norm
        return StepRecord(done + 1, grads.loss / x.shape[0], norm, beta, update.skipped, self.optim.lr)
