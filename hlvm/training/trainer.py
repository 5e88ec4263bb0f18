"""Training with Pyro SVI: checkpoints, exact resume, EMA, mixed precision and data parallelism.

One :class:`Trainer` runs ``pyro.infer.SVI`` on any model/guide pair with the estimator that fits
its DAG (:func:`hlvm.estimators.default_estimator`).  Design points:

* **Exact resume.** Every step's randomness is seeded from ``(seed, step, shard)`` and the data
  order comes from a saved generator, so a run resumed from a checkpoint reproduces the losses of
  an uninterrupted run bit for bit on CPU.
* **Atomic checkpoints.** A checkpoint is written to a temporary file in the same folder, flushed
  and renamed over the old one: a write killed mid-way leaves the last checkpoint loadable.
* **Data parallelism.** Under ``torchrun --nproc_per_node N`` each rank takes its shard of every
  global batch, gradients are summed with ``all_reduce`` (gloo on CPU, nccl on GPU), and the
  summed loss equals the single-process loss on the same global batch computed with
  ``grad_shards = N`` (same per-shard random streams).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import pyro
import torch
import torch.distributed as dist
from pyro.infer import TraceMeanField_ELBO

from . import optim as hlvm_optim
from .compile import RecordedLoss, SVIWithReplay
from .checkpoints import CHECKPOINT, load_checkpoint, load_run_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..data import DataSplit, load_dataset
from ..eval import evaluate
from .anneal import ScaleLatents, warmup_beta
from .free_bits import FreeBitsELBO
from ..estimators import make_estimator
from .monitor import RunMonitor, elbo_terms
from ..registry import build_model, load_class
from .checks import (check_data_fits, clean_stale_tmp, config_changes, prepare_run_folder, validate_config)

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "EvaluationFailed", "save_checkpoint", "load_checkpoint",
           "load_run_checkpoint", "train", "WARMUP_STEPS"]

#: steps of each :meth:`Trainer.fit` call left out of its throughput (warm-up: allocation, caches, compilation)
WARMUP_STEPS = 3


class TrainingDiverged(RuntimeError):
    """The loss or its gradient became NaN or infinite; no update was applied and the last
    checkpoint, written at a step whose loss and parameters were finite, was kept."""


class EvaluationFailed(RuntimeError):
    """Training went on but evaluating or writing its results failed; the trained state was saved first."""


class _NonFinite(Exception):
    """Raised inside an SVI step, before the optimizer runs, when the loss or a gradient is not finite."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved inside each checkpoint)."""

    model: str = "vae"
    data: str = "mnist5k"
    binarize: str = "static"
    data_dir: str | None = None
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    T: int | None = None
    layers: int | None = None
    estimator: str = "auto"
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False
    ema: float = 0.0
    amp: bool = False
    eval_every: int = 0
    eval_examples: int = 1000
    checkpoint_every: int = 0
    grad_shards: int = 1
    kl_warmup: int = 0
    free_bits: float = 0.0
    grad_clip: float | None = None
    skip_norm: float | None = None
    progress: bool = True
    log_every: int = 0
    tensorboard: bool = False
    compile: bool = False
    threads: int | None = None
    model_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first option out of its range (:func:`hlvm.training.checks.validate_config`)."""
        validate_config(self)


# ---------------------------------------------------------------------------------------------
def _shard_seed(seed: int, step: int, shard: int) -> int:
    return (seed * 1_000_003 + step * 7919 + shard * 104_729) % (2**63 - 1)


# ---------------------------------------------------------------------------------------------
class Trainer:
    """Pyro SVI on one model with checkpoints (see module docstring)."""

    def __init__(self, cfg: TrainConfig, data: DataSplit | None = None, log=print):
        cfg.validate()
        self.cfg, self.log = cfg, log
        if cfg.threads is not None:  # None: leave torch's setting (the CLI passes hlvm.limits.default_threads())
            torch.set_num_threads(cfg.threads)
        self.world, self.rank = 1, 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            if cfg.device.startswith("cuda"):
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cfg.device == "cuda" and self.world > 1 else cfg.device)
        if cfg.batch_size % (self.world * cfg.grad_shards):
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by world size × grad shards = {self.world * cfg.grad_shards}")
        self.ckpt_path = os.path.join(cfg.out, CHECKPOINT)
        prepare_run_folder(cfg.out, CHECKPOINT, cfg.resume, cfg.overwrite)
        if self.is_main:
            clean_stale_tmp(cfg.out)
        resumed = self._resume_checkpoint() if cfg.resume else None
        load_class(cfg.model)  # an unknown name or a broken model file fails before the data are read
        self.data = data if data is not None else load_dataset(cfg.data, cfg.binarize, cfg.data_dir)
        if self.data.train.shape[0] < cfg.batch_size:
            raise ValueError(f"--batch-size {cfg.batch_size} exceeds the {self.data.train.shape[0]} training examples")
        pyro.clear_param_store()
        pyro.set_rng_seed(cfg.seed)
        self.model = build_model(cfg.model, self.data.shape, self.data.kind, T=cfg.T, layers=cfg.layers,
                                 **cfg.model_kwargs).to(self.device)
        self.dtype = next(self.model.parameters()).dtype
        check_data_fits(self.model, self.data.test[:2].to(self.device, self.dtype), cfg.model, self.data)
        #: the ELBO: what every evaluation reports
        self.bound_estimator = make_estimator(cfg.estimator, self.model)
        #: the training objective: the ELBO, or with --free-bits its free-bits version
        self.estimator = self.bound_estimator
        if cfg.free_bits > 0:
            if not isinstance(self.bound_estimator, TraceMeanField_ELBO):
                raise ValueError("--free-bits needs analytic per-layer KLs: a model whose estimator is TraceMeanField_ELBO")
            self.estimator = FreeBitsELBO(cfg.free_bits)
        # one torch Adam over all parameters; optional global-norm clipping and VDVAE update skipping
        self.optim = hlvm_optim.Adam({"lr": cfg.lr}, clip_norm=cfg.grad_clip, skip_norm=cfg.skip_norm)
        self.svi = SVIWithReplay(self.model.model, self.model.guide, self.optim, loss=self._loss,
                                 loss_and_grads=self._loss_and_grads)
        #: --compile: the step recorded once per batch shape and replayed (hlvm.training.compile); Pyro's own
        #: step during KL warm-up (β changes every step) and under --amp
        self.recorded = RecordedLoss(self.model.model, self.model.guide, self.estimator, log=self.log) if cfg.compile else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.batch_idx, self.perm = 0, 0, None
        self.history: list[dict] = []
        self.losses: list[float] = []
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if cfg.ema > 0 else None
        if resumed is not None:
            self.load(resumed)
            if self.step > self.total_steps:
                raise ValueError(f"--resume: {self.ckpt_path} is already at step {self.step}, beyond the "
                                 f"{self.total_steps} steps asked for (--steps/--epochs)")

    # -- sizes -----------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.data.train.shape[0] // self.cfg.batch_size

    @property
    def total_steps(self) -> int:
        if self.cfg.steps is not None:
            return self.cfg.steps
        return (self.cfg.epochs if self.cfg.epochs is not None else 1) * self.steps_per_epoch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the loss: per-shard seeded, summed over shards and ranks --------------------------
    def _local_shards(self, x):
        n = self.world * self.cfg.grad_shards
        parts = x.chunk(n)
        first = self.rank * self.cfg.grad_shards
        return [(first + k, parts[first + k]) for k in range(self.cfg.grad_shards)]

    def _shard_loss(self, model, guide, shard_index, xs, differentiable):
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_shard_seed(self.cfg.seed, self.step, shard_index))
            beta = warmup_beta(self.step, self.cfg.kl_warmup)
            scaled = ScaleLatents(beta) if differentiable and beta < 1.0 else nullcontext()
            with scaled, torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.cfg.amp):
                if differentiable and self.recorded is not None and beta == 1.0 and not self.cfg.amp:
                    loss, params, grads = self.recorded(xs)
                    for p, g in zip(params, grads):  # accumulate over shards, as backward() would
                        p.grad = g if p.grad is None else p.grad + g
                    self.svi.replayed.extend(params)
                    return loss.detach().double()
                if differentiable:
                    loss = self.estimator.differentiable_loss(model, guide, xs)
                    loss.backward()
                    return loss.detach().double()
                return torch.tensor(self.estimator.loss(model, guide, xs), dtype=torch.float64)

    def _loss(self, model, guide, x):
        return sum(self._shard_loss(model, guide, i, xs, False) for i, xs in self._local_shards(x))

    def _loss_and_grads(self, model, guide, x):
        total = sum(self._shard_loss(model, guide, i, xs, True) for i, xs in self._local_shards(x))
        if self.world > 1:
            params = [p for p in self.model.parameters() if p.requires_grad]
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = torch.cat([p.grad.reshape(-1) for p in params] + [total.reshape(1).to(params[0].dtype).to(self.device)])
            dist.all_reduce(flat)
            offset = 0
            for p in params:
                n = p.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p))
                offset += n
            total = flat[-1].double().cpu()
        loss = total.item()
        self._check_finite(loss)
        return loss

    def _check_finite(self, loss: float) -> None:
        """Stop the step before the optimizer runs if the loss or (unless ``skip_norm`` skips such
        updates) the gradient is not finite, so that no NaN ever reaches the parameters."""
        if not math.isfinite(loss):
            raise _NonFinite(f"loss became {loss}")
        if self.cfg.skip_norm is None:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not grads:
                return
            # one pass and one sync: the global norm, which is also the step's logged gradient norm;
            # a finite norm means finite gradients, and only a non-finite one (NaN, inf, or an
            # overflow of the squares) needs the exact per-tensor check
            norm = float(torch.nn.utils.get_total_norm(grads))
            self.optim.last_grad_norm = norm
            if not math.isfinite(norm) and not all(bool(torch.isfinite(g).all()) for g in grads):
                raise _NonFinite(f"gradient became non-finite (loss {loss:.6g})")

    # -- data ------------------------------------------------------------------------------
    def _next_batch(self):
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
    def swap_ema(self):
        """Exchange the live weights and the EMA weights (call twice to restore)."""
        if self.ema is None:
            return
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema)
        self.ema = live

    def evaluate_test(self, n: int | None = None, batch_size: int = 250) -> dict:
        """Test ELBO (nats per example and bits/dim) on the first ``n`` test examples, by
        :func:`hlvm.evaluate` (EMA weights when EMA is on)."""
        n = min(n or self.cfg.eval_examples, self.data.test.shape[0])
        self.swap_ema()
        try:
            ev = evaluate(self.model, self.data.test[:n], elbo=self.bound_estimator, batch_size=batch_size,
                          seed=self.cfg.seed + 1)
        finally:
            self.swap_ema()
        return {"elbo": ev["elbo"], "bpd": ev["bpd"], "terms": elbo_terms(ev)}

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "version": 1, "config": asdict(self.cfg), "model": self.model.state_dict(),
            "optim": self.optim.get_state(),
            "estimator": self.estimator.state_dict() if hasattr(self.estimator, "state_dict") else None,
            "rng": rng_state(), "gen": self.gen.get_state(), "perm": self.perm, "batch_idx": self.batch_idx,
            "step": self.step, "history": self.history, "losses": self.losses, "ema": self.ema,
            "data": {"name": self.data.name, "kind": self.data.kind, "shape": self.data.shape},
        }

    def save(self, path: str | None = None) -> None:
        if self.is_main:
            save_checkpoint(path or self.ckpt_path, self.state())

    def _resume_checkpoint(self) -> dict:
        """The run's checkpoint, checked against this config: a setting that would alter the run is
        refused (one line listing all such differences); allowed changes (ALLOWED_ON_RESUME) are logged."""
        ck = load_run_checkpoint(self.ckpt_path, map_location=self.device)
        refused, allowed = config_changes(ck["config"], asdict(self.cfg), asdict(TrainConfig()))
        if refused:
            raise ValueError(f"--resume: {self.ckpt_path} was trained with other settings ({'; '.join(refused)}); "
                             "resume with the run's own settings, or pass --overwrite to start a new run")
        shown = [c for c in allowed if not c.startswith(("resume ", "overwrite ", "progress "))]
        if shown and self.is_main:
            self.log(f"resuming {self.ckpt_path} at step {ck['step']} with changed settings: {'; '.join(shown)}")
        return ck

    def load(self, path) -> None:
        """Restore the state of a checkpoint (a path or an already read checkpoint dict)."""
        ck = path if isinstance(path, dict) else load_run_checkpoint(path, map_location=self.device)
        if ck["config"]["model"] != self.cfg.model:
            raise ValueError(f"checkpoint is of model {ck['config']['model']!r}, not {self.cfg.model!r}")
        self.model.load_state_dict(ck["model"])
        self.optim.set_state(ck["optim"])
        if ck.get("estimator") and hasattr(self.estimator, "load_state_dict"):
            self.estimator.load_state_dict(ck["estimator"])
        set_rng_state(ck["rng"])
        self.gen.set_state(ck["gen"])
        self.perm, self.batch_idx, self.step = ck["perm"], ck["batch_idx"], ck["step"]
        self.history, self.losses, self.ema = ck["history"], ck["losses"], ck["ema"]

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, total = self.cfg, self.total_steps
        eval_every = cfg.eval_every or self.steps_per_epoch
        ckpt_every = cfg.checkpoint_every or self.steps_per_epoch
        if self.is_main:
            d = self.data
            self.log(f"{cfg.model}: {d.name} ({d.kind}{', dynamic binarization' if d.dynamic else ''}), "
                     f"{d.train.shape[0]:,} training / {d.test.shape[0]:,} test examples; {cfg.estimator} estimator "
                     f"{type(self.estimator).__name__}; steps {self.step} → {total}")
        monitor = RunMonitor(self, enabled=self.is_main)
        start = time.perf_counter()
        steps_run = 0
        while self.step < total:
            step_start = time.perf_counter()
            x = self._next_batch().to(self.device, self.dtype)
            try:
                loss = self.svi.step(x)
            except _NonFinite as e:
                monitor.close()
                raise TrainingDiverged(f"{e} at step {self.step + 1}; training stopped before the update and "
                                       f"{self._kept()}") from None
            except ValueError as e:  # Pyro's validation meets NaN parameters or factors first
                if "invalid values" not in str(e) and "nan" not in str(e).lower():
                    raise
                monitor.close()
                raise TrainingDiverged(f"loss became nan at step {self.step + 1} ({str(e).splitlines()[0]}); training "
                                       f"stopped and {self._kept()}") from None
            if not math.isfinite(loss):  # an SVI step that reports a non-finite loss itself
                monitor.close()
                raise TrainingDiverged(f"loss became {loss} at step {self.step + 1}; training stopped and {self._kept()}")
            self.step += 1
            steps_run += 1
            per_ex = loss / x.shape[0]
            self.losses.append(per_ex)
            if self.ema is not None:
                with torch.no_grad():
                    for k, v in self.model.state_dict().items():
                        if v.dtype.is_floating_point:
                            self.ema[k].mul_(cfg.ema).add_(v.detach(), alpha=1 - cfg.ema)
                        else:
                            self.ema[k].copy_(v)
            monitor.on_step(per_ex, time.perf_counter() - step_start)
            if self.step % eval_every == 0 or self.step == total:
                ev = self._guarded(self.evaluate_test, "the test evaluation")
                elapsed = time.perf_counter() - start
                self.history.append({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                                     "train_elbo": -per_ex, "test_elbo": ev["elbo"], "test_bpd": ev["bpd"],
                                     "seconds": elapsed, "steps_run": steps_run})
                monitor.on_eval(ev)
            if self.step % ckpt_every == 0 or self.step == total:
                self.save()
        monitor.close()
        if self.is_main:
            self._guarded(self._write_history, "writing history.json")
        seconds = time.perf_counter() - start
        return {"steps": self.step, "seconds": seconds, "history": self.history, "losses": self.losses,
                "seconds_per_epoch": monitor.seconds_per_step(WARMUP_STEPS) * self.steps_per_epoch,
                "timed_steps": max(steps_run - WARMUP_STEPS, 0)}

    def _write_history(self) -> None:
        with open(os.path.join(self.cfg.out, "history.json"), "w") as f:
            json.dump({"history": self.history, "losses": self.losses}, f)

    def _kept(self) -> str:
        if os.path.exists(self.ckpt_path):
            return f"the last good checkpoint is kept at {self.ckpt_path} (written at a finite loss, with finite parameters)"
        return "no checkpoint had been written yet"

    def _guarded(self, work, what: str):
        """Run ``work()``; if it fails, save the trained state first and raise EvaluationFailed saying where it is."""
        try:
            return work()
        except Exception as e:
            try:
                self.save()
                kept = f"the trained state (step {self.step}) is saved in {self.ckpt_path}; continue with --resume"
            except Exception as e2:
                kept = f"saving the checkpoint failed too ({type(e2).__name__}: {e2})"
            msg = str(e).splitlines()[0] if str(e) else ""
            raise EvaluationFailed(f"{what} failed after step {self.step} ({type(e).__name__}: {msg}); {kept}") from e


def train(cfg: TrainConfig, data: DataSplit | None = None) -> Trainer:
    """Build a :class:`Trainer` and run it; returns the trainer (model, history, losses)."""
    t = Trainer(cfg, data)
    t.result = t.fit()
    return t
