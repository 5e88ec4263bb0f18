"""What a training run reports while it runs: progress output, a metrics file and TensorBoard.

* **Progress.** On a terminal, a tqdm bar (live ELBO and bits/dim).  When stderr is not a terminal
  (a log file, a pipe, CI) or ``log_every`` is set, one plain line every ``log_every`` steps
  (``0``: automatic, about twenty lines a run) instead of a bar redrawn with carriage returns.
* **Metrics file.** ``metrics.jsonl`` in the run folder: one JSON object a line, ``"kind": "train"``
  for every step run (step, loss, bits/dim, learning rate, gradient norm, KL weight, whether the update
  was skipped, seconds: the step's :class:`~hlvm.training.step.StepRecord`) and
  ``"kind": "eval"`` for every evaluation (test ELBO, bits/dim, its terms; for an estimator that
  does not read them from its own trace, such as ``TraceMeanField_ELBO``, the terms come from
  their own draw of the latents and add up to the ELBO only up to Monte Carlo error).  A resumed run keeps
  the records up to its checkpoint's step and appends after them, so an exact resume leaves one
  record per step, as an uninterrupted run would.
* **TensorBoard** (``tensorboard=True``): the same scalars and a sample grid at each evaluation,
  written by ``torch.utils.tensorboard.SummaryWriter`` into the run folder.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable

import torch

__all__ = ["METRICS", "RunMonitor", "MetricsFile", "elbo_terms", "line_mode", "read_metrics", "run_step_seconds", "auto_log_every",
           "sample_grid"]

METRICS = "metrics.jsonl"
AUTO_LINES = 20  # progress lines a run prints in line mode with log_every = 0


def line_mode(log_every: int, stream=None) -> bool:
    """True when progress goes out as plain lines: ``log_every`` was asked for, or ``stream``
    (default stderr, where tqdm writes) is not a terminal."""
    stream = sys.stderr if stream is None else stream
    return log_every > 0 or not (hasattr(stream, "isatty") and stream.isatty())


def auto_log_every(total: int) -> int:
    """Steps between progress lines when ``log_every`` is 0: about :data:`AUTO_LINES` per run."""
    return max(1, math.ceil(total / AUTO_LINES))


def elbo_terms(ev: dict) -> dict:
    """The ELBO's terms in an :func:`hlvm.evaluate` result, flat (nats per example): reconstruction,
    prior and diffusion of diffusion chains, or reconstruction and each layer's KL."""
    terms = {k: ev[k] for k in ("reconstruction", "prior", "diffusion", "kl_total") if k in ev}
    terms.update({f"kl/{name}": v for name, v in ev.get("kl", {}).items()})
    return {k: float(v) for k, v in terms.items()}


def read_metrics(folder: str) -> list[dict]:
    """The records of a run folder's metrics file (empty when it has none); a last line torn by a
    run killed mid-write is dropped, a damaged line before it is a ValueError naming the record."""
    path = os.path.join(folder, METRICS)
    if not os.path.isfile(path):
        return []
    with open(path, errors="replace") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines[:-1], start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:  # not a torn tail: the file was damaged, so say where
            raise ValueError(f"metrics file {path} is corrupt at record {i} ({e.msg}); move it aside to "
                             "resume without the earlier records") from None
    try:
        records += [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        pass
    return records


def run_step_seconds(folder: str) -> float:
    """The seconds a run's training steps took, summed over every segment of a resumed run (each
    step's ``step_seconds`` in the metrics file; periodic evaluations excluded) — the wall-clock of a
    run that one process's timer cannot give once the run was resumed.  0 without a metrics file."""
    return float(sum(r.get("step_seconds", 0.0) for r in read_metrics(folder) if r.get("kind") == "train"))


class MetricsFile:
    """``metrics.jsonl`` of a run folder, cut back to the records of steps ≤ ``start_step`` (the
    checkpoint a resumed run starts from; 0 for a new run) and appended to, one record at a time
    (opened and closed per record: nothing is left open or unflushed when a run stops)."""

    def __init__(self, folder: str, start_step: int):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, METRICS)
        kept = [r for r in read_metrics(folder) if r.get("step", 0) <= start_step] if start_step > 0 else []
        tmp = os.path.join(folder, f".{METRICS}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class _Lines:
    """Line-mode progress: one line every ``every`` steps and at the last step, on stderr."""

    def __init__(self, total: int, every: int, desc: str, stream=None):
        self.total, self.every, self.desc = total, every, desc
        self.stream = sys.stderr if stream is None else stream
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, bpd: float) -> None:
        if step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.t0
            print(f"{self.desc}: step {step}/{self.total}  ELBO {-loss:.2f}  {bpd:.4f} bits/dim  {elapsed:.1f} s",
                  file=self.stream, flush=True)

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


class _Bar:
    """Terminal progress: a tqdm bar; ``enabled=False`` draws nothing."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)

    def update(self, step: int, loss: float, bpd: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(elbo=f"{-loss:.2f}", bpd=f"{bpd:.4f}")

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


class RunMonitor:
    """Progress, metrics file and optional TensorBoard of one :class:`hlvm.training.Trainer` run.

    It reports what it is handed — a :class:`~hlvm.training.step.StepRecord` per step, an
    evaluation per evaluation — and reads nothing back from the trainer.

    :param cfg: the run's :class:`~hlvm.training.TrainConfig` (``out``, ``model``, ``progress``,
        ``log_every``, ``tensorboard``).
    :param data: the run's :class:`~hlvm.data.DataSplit` (its name and dimension).
    :param int total: the step the run ends at.
    :param int start: the step it starts from (a resumed run's checkpoint step; 0 for a new run).
    :param enabled: False on the ranks other than 0 of a data-parallel run: nothing is written.
    """

    def __init__(self, cfg, data, total: int, start: int = 0, enabled: bool = True):
        self.enabled, self.t0 = enabled, time.perf_counter()
        self.last_loss = float("nan")
        self.step_times: list[float] = []
        self.bits = 1.0 / (data.dim * math.log(2))
        desc = f"{cfg.model} on {data.name}"
        show = enabled and cfg.progress
        if show and line_mode(cfg.log_every):
            self.progress = _Lines(total, cfg.log_every or auto_log_every(total), desc)
        else:
            self.progress = _Bar(total, start, desc, show)
        self.metrics = MetricsFile(cfg.out, start) if enabled else None
        self.tb = _summary_writer(cfg.out) if enabled and cfg.tensorboard else None

    def on_step(self, record) -> None:
        """After a step: its :class:`~hlvm.training.step.StepRecord` (loss in nats per example)."""
        bpd = record.loss * self.bits
        self.last_loss = record.loss
        self.step_times.append(record.seconds)
        self.progress.update(record.step, record.loss, bpd)
        if not self.enabled:
            return
        line = {"kind": "train", "step": record.step, "loss": record.loss, "bpd": bpd, "lr": record.lr,
                "grad_norm": record.grad_norm, "beta": record.beta, "skipped": record.skipped,
                "step_seconds": record.seconds, "seconds": time.perf_counter() - self.t0}
        self.metrics.write(line)
        if self.tb is not None:
            for k in ("loss", "bpd", "lr", "grad_norm", "beta"):
                self.tb.add_scalar(f"train/{k}", line[k], record.step)

    def on_eval(self, step: int, ev: dict, samples: Callable[[], torch.Tensor | None] | None = None) -> None:
        """After the evaluation at ``step``: ``ev`` holds ``elbo``, ``bpd`` and optionally ``terms``;
        ``samples()`` gives the sample grid for TensorBoard (called only when TensorBoard is on)."""
        self.progress.write(f"step {step:6d}  train ELBO {-self.last_loss:9.3f}  test ELBO {ev['elbo']:9.3f} nats  {ev['bpd']:.4f} bits/dim")
        if not self.enabled:
            return
        record = {"kind": "eval", "step": step, "elbo": ev["elbo"], "bpd": ev["bpd"], **ev.get("terms", {}),
                  "seconds": time.perf_counter() - self.t0}
        self.metrics.write(record)
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("kind", "step", "seconds"):
                    self.tb.add_scalar(f"eval/{k}", v, step)
            grid = samples() if samples is not None else None
            if grid is not None:
                self.tb.add_image("samples", grid, step)
            self.tb.flush()

    def seconds_per_step(self, warmup: int = 1) -> float:
        """Mean wall-clock seconds of the training steps run, without the first ``warmup`` (lazy
        initialisation, allocator and kernel caches) unless there are no others; NaN before any.
        Evaluations and checkpoints are not counted."""
        times = self.step_times[warmup:] or self.step_times
        return sum(times) / len(times) if times else float("nan")

    def close(self) -> None:
        self.progress.close()
        if self.tb is not None:
            self.tb.close()


def _summary_writer(folder: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=folder)


def sample_grid(model, shape: tuple, kind: str, seed: int, n: int = 16) -> torch.Tensor | None:
    """A (3, H, W) grid of ``n`` samples of ``model`` drawn at ``seed`` (the global random state is
    left as it was), or None for data of ``shape`` that are not images (C, H, W)."""
    from torchvision.utils import make_grid

    from ..programs.sample import draw

    if len(shape) != 3:
        return None
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        x = draw(model, n).reshape(n, *shape).detach().float().cpu()  # (n, C, H, W)
    if kind == "8bit":
        x = x / 255.0
    return make_grid(x.clamp(0, 1), nrow=int(math.ceil(math.sqrt(n))), padding=1, pad_value=0.5)
