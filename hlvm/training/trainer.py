"""Training with Pyro SVI, as a sequence of named stages: checkpoints, exact resume, EMA, mixed
precision and data parallelism.

One :class:`Trainer` runs stochastic variational inference (Hoffman et al. 2013; Kingma & Welling
2014) on any model/guide pair with the estimator that fits its DAG
(:func:`hlvm.estimators.default_estimator`).  Building it reads as its stages:

1. **plan** — the options (:meth:`TrainConfig.validate`), this process's place in the run
   (:mod:`hlvm.training.parallel`), the run folder and, with ``--resume``, the checkpoint checked
   against the options (:mod:`hlvm.training.checks`);
2. **data** — the dataset (:func:`hlvm.data.load_dataset`);
3. **model** — the hierarchy (:func:`hlvm.registry.build_model`), checked against the data;
4. **objective** — the ELBO estimator and, with ``--free-bits``, the training objective;
5. **loop** — the optimizer, the (optionally recorded) per-shard seeded step
   (:mod:`hlvm.training.step`) and the loop state, restored from the checkpoint on resume.

:meth:`Trainer.fit` then runs the loop; after each step its :class:`~hlvm.training.step.StepRecord`
goes to the monitor (:mod:`hlvm.training.monitor`), and evaluations and checkpoints
(:mod:`hlvm.training.checkpoints`) follow when due.  Design points:

* **Exact resume.** Every step's randomness is seeded from ``(seed, step, shard)`` and the data
  order comes from a saved generator, so a run resumed from a checkpoint reproduces the losses of
  an uninterrupted run bit for bit on CPU.
* **Atomic checkpoints.** A checkpoint is written to a temporary file in the same folder, flushed
  and renamed over the old one: a write killed mid-way leaves the last checkpoint loadable.
* **Data parallelism.** Under ``torchrun --nproc_per_node N`` the summed loss equals the
  single-process loss on the same global batch computed with ``grad_shards = N``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, replace

import pyro
import torch

from . import optim as hlvm_optim
from ..data import DataSplit, load_dataset
from ..programs.elbo import DiffusionELBO
from ..eval import evaluate
from ..limits import model_label
from ..registry import build_model, check_model_options
from .checkpoints import CHECKPOINT, FORMAT, load_checkpoint, load_run_checkpoint, rng_state, save_checkpoint, set_rng_state
from .checks import QUIET_ON_RESUME, check_data_fits, clean_stale_tmp, config_changes, prepare_run_folder
from .compile import RecordedLoss
from .lr_schedule import learning_rate
from .config import TrainConfig
from .ema import EMA
from .failures import EvaluationFailed, TrainingDiverged, diverged_step, guarded
from .preemption import Preempted, PreemptionGuard
from .preflight import training_objective
from .monitor import RunMonitor, elbo_terms, sample_grid
from .parallel import Processes, join_processes
from .step import ShardedLoss, StepRecord, SVIStep

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "EvaluationFailed", "save_checkpoint", "load_checkpoint",
           "load_run_checkpoint", "train", "WARMUP_STEPS"]

#: steps of each :meth:`Trainer.fit` call left out of its throughput (warm-up: allocation, caches, compilation)
WARMUP_STEPS = 3


class Trainer:
    """Pyro SVI on one model with checkpoints (see module docstring).

    :param TrainConfig cfg: the run's options.
    :param DataSplit data: the data (default: read by ``cfg.data``).
    :param log: where one-line notices go.
    """

    def __init__(self, cfg: TrainConfig, data: DataSplit | None = None, log=print):
        cfg.validate()
        self.cfg, self.log = cfg, log
        self.processes = self._plan_processes()
        self.ckpt_path = self._plan_folder()
        resumed = self._read_resume() if cfg.resume else None
        self.data = self._load_data(data)
        self.model = self._build_model()
        self.dtype = next(self.model.parameters()).dtype
        #: the ELBO (what every evaluation reports) and the training objective (the ELBO, or with
        #: --free-bits its free-bits version)
        self.bound_estimator, self.estimator = self._objective()
        #: the optimizer; --compile's recorded step (or None); the update, which records each step
        self.optim, self.recorded, self.svi = self._update_rule()
        # the loop's state (what a checkpoint holds besides the model and optimizer)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.batch_idx, self.perm = 0, 0, None
        self.history: list[dict] = []
        self.losses: list[float] = []
        self.ema: EMA | None = EMA.of(self.model, cfg.ema) if cfg.ema > 0 else None
        #: what the last :meth:`fit` returned (None before it)
        self.result: dict | None = None
        if resumed is not None:
            self._resume_from(resumed)

    # -- sizes and processes ---------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.cfg.steps_per_epoch(self.data.train.shape[0])

    @property
    def total_steps(self) -> int:
        return self.cfg.total_steps(self.data.train.shape[0])

    @property
    def world(self) -> int:
        return self.processes.world

    @property
    def rank(self) -> int:
        return self.processes.rank

    @property
    def device(self) -> torch.device:
        return self.processes.device

    @property
    def is_main(self) -> bool:
        return self.processes.is_main

    # -- stage 1: plan ---------------------------------------------------------------------
    def _plan_processes(self) -> Processes:
        """Plan: torch's threads, this process's place in the run and its device, and a batch
        that splits evenly over processes × gradient shards."""
        cfg = self.cfg
        if cfg.threads is not None:  # None: leave torch's setting (the CLI passes hlvm.limits.default_threads())
            torch.set_num_threads(cfg.threads)
        processes = join_processes(cfg.device)
        if cfg.batch_size % (processes.world * cfg.grad_shards):
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by world size × grad shards = "
                             f"{processes.world * cfg.grad_shards}")
        return processes

    def _plan_folder(self) -> str:
        """Plan: the run folder, checked (nothing is created yet) and cleared of the temporary
        files of killed checkpoint writes; the checkpoint's path."""
        prepare_run_folder(self.cfg.out, CHECKPOINT, self.cfg.resume, self.cfg.overwrite)
        if self.is_main:
            clean_stale_tmp(self.cfg.out)
        return os.path.join(self.cfg.out, CHECKPOINT)

    def _read_resume(self) -> dict:
        """Plan: the run's checkpoint, checked against this config: a setting that would alter the
        run is refused (one line listing all such differences); allowed changes
        (:data:`~hlvm.training.checks.ALLOWED_ON_RESUME`) are logged."""
        ck = load_run_checkpoint(self.ckpt_path, map_location=self.device)
        refused, allowed = config_changes(ck["config"], asdict(self.cfg), asdict(TrainConfig()))
        if refused:
            raise ValueError(f"--resume: {self.ckpt_path} was trained with other settings "
                             f"({'; '.join(map(str, refused))}); resume with the run's own settings, or pass "
                             "--overwrite to start a new run")
        shown = [str(c) for c in allowed if c.field not in QUIET_ON_RESUME]
        if shown and self.is_main:
            self.log(f"resuming {self.ckpt_path} at step {ck['step']} with changed settings: {'; '.join(shown)}")
        return ck

    # -- stages 2-4: data, model, objective ------------------------------------------------
    def _load_data(self, data: DataSplit | None) -> DataSplit:
        """Data: ``data`` or the dataset the options name, once the model's name is known to load
        and its options are its constructor's (an unknown name, a broken model file or an option
        the model does not take fails before the data are read; a refused value, when the model is
        built, before any step)."""
        check_model_options(self.cfg.model, self.cfg.model_kwargs)
        data = data if data is not None else load_dataset(self.cfg.data, self.cfg.binarize, self.cfg.data_dir)
        if data.train.shape[0] < self.cfg.batch_size:
            raise ValueError(f"--batch-size {self.cfg.batch_size} exceeds the {data.train.shape[0]} training examples")
        return data

    def _build_model(self) -> torch.nn.Module:
        """Model: built at the run's seed on a cleared param store, on the device, and checked to
        fit the data (its likelihood's support holds the examples)."""
        cfg = self.cfg
        pyro.clear_param_store()
        pyro.set_rng_seed(cfg.seed)
        model = build_model(cfg.model, self.data.shape, self.data.kind, T=cfg.T, layers=cfg.layers,
                            **cfg.model_kwargs).to(self.device)
        dtype = next(model.parameters()).dtype
        check_data_fits(model, self.data.test[:2].to(self.device, dtype), cfg.model, self.data)
        return model

    def _objective(self):
        """Objective: (the ELBO estimator of the model's DAG, the training objective)."""
        return training_objective(self.cfg, self.model)

    # -- stage 5: the loop's parts ---------------------------------------------------------
    def _update_rule(self):
        """Loop: (one torch Adam over all parameters, with optional global-norm clipping and
        VDVAE update skipping; ``--compile``'s recorded step, or None; the SVI update).  The
        recorded step is replayed only at β = 1 and without ``--amp``: Pyro's own step runs during
        KL warm-up, where β changes every step."""
        cfg, model = self.cfg, self.model
        optim = hlvm_optim.Adam({"lr": cfg.lr}, clip_norm=cfg.grad_clip, skip_norm=cfg.skip_norm)
        # the recorded step is float32: bf16 (--amp) runs Pyro's step
        recorded = RecordedLoss(model.model, model.guide, self.estimator, log=self.log) if cfg.compile and not cfg.amp else None
        objective = ShardedLoss(self.estimator, model, self.processes, cfg.grad_shards, cfg.seed, amp=cfg.amp,
                                recorded=recorded, guard_gradients=cfg.skip_norm is None)
        svi = SVIStep(model.model, model.guide, optim, objective, cfg.kl_warmup, clock=lambda: self.step)
        return optim, recorded, svi

    def _resume_from(self, ck: dict) -> None:
        """Loop: the state of the checkpoint ``ck``, which must lie within the steps asked for."""
        self.load(ck)
        if self.step > self.total_steps:
            raise ValueError(f"--resume: {self.ckpt_path} is already at step {self.step}, beyond the "
                             f"{self.total_steps} steps asked for (--steps/--epochs)")

    # -- data ------------------------------------------------------------------------------
    def _next_batch(self):
        """The next training batch: the saved generator's permutation, one epoch at a time."""
        if self.perm is None or self.batch_idx >= self.steps_per_epoch:
            self.perm = torch.randperm(self.data.train.shape[0], generator=self.gen)
            self.batch_idx = 0
        b = self.cfg.batch_size
        idx = self.perm[self.batch_idx * b:(self.batch_idx + 1) * b]
        self.batch_idx += 1
        if self.data.dynamic:
            return torch.bernoulli(self.data.train_probs[idx], generator=self.gen)
        return self.data.train[idx]

    # -- evaluation ------------------------------------------------------------------------
    def ema_weights(self):
        """A ``with`` block in which the model holds the EMA weights (the live weights when EMA is
        off); the live weights are back afterwards."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(self.model)

    def evaluate_test(self, n: int | None = None, batch_size: int = 250) -> dict:
        """Test ELBO (nats per example and bits/dim) on the first ``n`` test examples, by
        :func:`hlvm.evaluate` (EMA weights when EMA is on; a diffusion bound with antithetic, not
        importance-sampled, times: :meth:`~hlvm.programs.elbo.DiffusionELBO.for_evaluation`)."""
        n = min(n or self.cfg.eval_examples, self.data.test.shape[0])
        bound = self.bound_estimator
        bound = bound.for_evaluation() if isinstance(bound, DiffusionELBO) else bound  # not the training sampler
        with self.ema_weights():
            ev = evaluate(self.model, self.data.test[:n], elbo=bound, batch_size=batch_size,
                          seed=self.cfg.seed + 1)
        return {"elbo": ev["elbo"], "bpd": ev["bpd"], "terms": elbo_terms(ev)}

    def sample_grid(self, n: int = 16):
        """A grid of ``n`` samples (EMA weights when EMA is on) for TensorBoard, or None for data
        that are not images (:func:`hlvm.training.monitor.sample_grid`)."""
        with self.ema_weights():
            return sample_grid(self.model, tuple(self.data.shape), self.data.kind, self.cfg.seed, n)

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict:
        """What a checkpoint holds: config, model, optimizer, estimator, random states, data order,
        loop counters, history and EMA weights."""
        return {
            "version": FORMAT, "config": asdict(self.cfg), "model": self.model.state_dict(),
            "optim": self.optim.get_state(),
            "estimator": self.estimator.state_dict() if isinstance(self.estimator, DiffusionELBO) else None,
            "rng": rng_state(), "gen": self.gen.get_state(), "perm": self.perm, "batch_idx": self.batch_idx,
            "step": self.step, "history": self.history, "losses": self.losses,
            "ema": self.ema.shadow if self.ema is not None else None,
            "data": {"name": self.data.name, "kind": self.data.kind, "shape": self.data.shape},
        }

    def save(self, path: str | None = None) -> None:
        """Write :meth:`state` atomically (rank 0 only)."""
        if self.is_main:
            save_checkpoint(path or self.ckpt_path, self.state())

    def load(self, path) -> None:
        """Restore the state of a checkpoint (a path or an already read checkpoint dict)."""
        ck = path if isinstance(path, dict) else load_run_checkpoint(path, map_location=self.device)
        if ck["config"]["model"] != self.cfg.model:
            raise ValueError(f"checkpoint is of model {ck['config']['model']!r}, not {self.cfg.model!r}")
        self.model.load_state_dict(ck["model"])
        self.optim.set_state(ck["optim"])
        if ck.get("estimator") and isinstance(self.estimator, DiffusionELBO):  # the one estimator with state
            self.estimator.load_state_dict(ck["estimator"])
        set_rng_state(ck["rng"])
        self.gen.set_state(ck["gen"])
        self.perm, self.batch_idx, self.step = ck["perm"], ck["batch_idx"], ck["step"]
        self.history, self.losses = ck["history"], ck["losses"]
        self.ema = EMA(ck["ema"], self.cfg.ema) if ck["ema"] is not None else None

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        """Run the loop from :attr:`step` to :attr:`total_steps`: each step's record goes to the
        monitor; evaluations every ``eval_every`` steps and checkpoints every ``checkpoint_every``
        (each epoch when 0, and both at the last step).  The run's result, also kept as :attr:`result`."""
        self._announce()
        monitor = RunMonitor(self.cfg, self.data, self.total_steps, self.step, enabled=self.is_main)
        start, steps_run = time.perf_counter(), 0
        try:
            with PreemptionGuard(self.world, self.device) as guard:
                while self.step < self.total_steps:
                    record = self._train_step()
                    steps_run += 1
                    monitor.on_step(record)
                    self._evaluate_and_checkpoint(record, monitor, start, steps_run)
                    # SIGTERM/SIGINT: stop after this step, every rank at the same one (after the last step
                    # the run ends anyway: no extra collective there, where ranks start to leave)
                    if self.step < self.total_steps and guard.requested():
                        self._stop_on_signal(guard)
        finally:
            monitor.close()
        if self.is_main:
            self._guarded(self._write_history, "writing history.json")
        self.result = {"steps": self.step, "seconds": time.perf_counter() - start, "history": self.history,
                       "losses": self.losses,
                       "seconds_per_epoch": monitor.seconds_per_step(WARMUP_STEPS) * self.steps_per_epoch,
                       "timed_steps": max(steps_run - WARMUP_STEPS, 0)}
        return self.result

    def _announce(self) -> None:
        """One line on what runs: model with its options, data, estimator, steps."""
        if self.is_main:
            cfg, d = self.cfg, self.data
            self.log(f"{model_label(cfg.model, cfg.model_kwargs)}: {d.name} ({d.kind}{', dynamic binarization' if d.dynamic else ''}), "
                     f"{d.train.shape[0]:,} training / {d.test.shape[0]:,} test examples; {cfg.estimator} estimator "
                     f"{type(self.estimator).__name__}; {self._step_kind()}; steps {self.step} → {self.total_steps}")

    def _step_kind(self) -> str:
        """Which update runs: the recorded step (the default), or Pyro's and why."""
        if self.recorded is not None:
            return "recorded step (--no-compile: Pyro's)"
        return "Pyro's step (--amp)" if self.cfg.compile else "Pyro's step (--no-compile)"

    def _train_step(self) -> StepRecord:
        """One step of the loop — the next batch, the update, the EMA — and its record, timed."""
        start = time.perf_counter()
        x = self._next_batch().to(self.device, self.dtype)
        cfg = self.cfg
        if cfg.lr_schedule != "constant" or cfg.lr_warmup:
            self.optim.set_lr(learning_rate(self.step, self.total_steps, cfg.lr, cfg.lr_schedule, cfg.lr_warmup))
        record = self._update(x)
        self.step += 1
        self.losses.append(record.loss)
        if self.ema is not None:
            self.ema.update(self.model, self.step)  # the decay warms up with the step: resumes exactly
        return replace(record, seconds=time.perf_counter() - start)

    def _update(self, x: torch.Tensor) -> StepRecord:
        """The SVI update on the batch ``x``; :class:`TrainingDiverged` if its loss or gradient is
        not finite (no update applied: :func:`hlvm.training.failures.diverged_step`)."""
        return diverged_step(self.svi.step, x, self.step + 1, self.estimator, self.model, self.ckpt_path)

    def _evaluate_and_checkpoint(self, record: StepRecord, monitor: RunMonitor, start: float, steps_run: int) -> None:
        """After a step: the test evaluation (into the history and the monitor) and the checkpoint,
        each when due."""
        total, epoch = self.total_steps, self.steps_per_epoch
        if self.step % (self.cfg.eval_every or epoch) == 0 or self.step == total:
            ev = self._guarded(self.evaluate_test, "the test evaluation")
            self.history.append({"step": self.step, "epoch": self.step / epoch, "train_elbo": -record.loss,
                                 "test_elbo": ev["elbo"], "test_bpd": ev["bpd"],
                                 "seconds": time.perf_counter() - start, "steps_run": steps_run})
            monitor.on_eval(self.step, ev, samples=self.sample_grid)
        if self.step % (self.cfg.checkpoint_every or epoch) == 0 or self.step == total:
            self.save()

    def _stop_on_signal(self, guard: PreemptionGuard) -> None:
        """Write the checkpoint of the step just finished (rank 0; the others wait for it) and the
        history, then raise :class:`Preempted`."""
        guard.hold()
        self.save()
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # no rank exits (and makes torchrun stop the others) before the checkpoint is on disk
        if self.is_main:
            self._write_history()
            self.log(f"{guard.signame}: stopped after step {self.step}; checkpoint saved at {self.ckpt_path}")
        raise Preempted(guard.signame, self.step, self.ckpt_path)

    def _write_history(self) -> None:
        with open(os.path.join(self.cfg.out, "history.json"), "w") as f:
            json.dump({"history": self.history, "losses": self.losses}, f)

    def _guarded(self, work, what: str):
        """Run ``work()``; if it fails, save the trained state first and raise EvaluationFailed saying
        where it is (:func:`hlvm.training.failures.guarded`)."""
        return guarded(work, what, self.save, self.step, self.ckpt_path)


def train(cfg: TrainConfig, data: DataSplit | None = None) -> Trainer:
    """Build a :class:`Trainer` and run it; returns the trainer (model, history, losses, and the
    fit's :attr:`Trainer.result`)."""
    trainer = Trainer(cfg, data)
    trainer.fit()
    return trainer
