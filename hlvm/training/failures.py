"""What a run does when something fails: a diverged step stops before its update, a failed
evaluation saves the trained state first — and each error says where the work is kept.

Two failures end a :class:`~hlvm.training.Trainer` run with an error the CLI reports in one line:

* :class:`TrainingDiverged` — the loss or a gradient of a step became NaN or infinite
  (:func:`diverged_step`): no update is applied, and the last checkpoint, written at a finite loss
  with finite parameters, is kept;
* :class:`EvaluationFailed` — training went on but evaluating or writing its results failed
  (:func:`guarded`): the trained state is saved before the error is raised, so a late failure
  never discards a trained model.
"""

from __future__ import annotations

import math
import os
import warnings

import pyro
import torch

from .step import NonFiniteStep

__all__ = ["TrainingDiverged", "EvaluationFailed", "kept_checkpoint", "diverged_step", "guarded"]


class TrainingDiverged(RuntimeError):
    """The loss or its gradient became NaN or infinite; no update was applied and the last
    checkpoint, written at a step whose loss and parameters were finite, was kept."""


class EvaluationFailed(RuntimeError):
    """Training went on but evaluating or writing its results failed; the trained state was saved first."""


def kept_checkpoint(path: str) -> str:
    """Where a stopped run's work is: the last good checkpoint at ``path``, or none yet."""
    if os.path.exists(path):
        return f"the last good checkpoint is kept at {path} (written at a finite loss, with finite parameters)"
    return "no checkpoint had been written yet"


def diverged_step(step, x: torch.Tensor, number: int, estimator, model, ckpt_path: str):
    """``step(x)`` (an SVI update, numbered ``number`` in the run), or :class:`TrainingDiverged`
    when its loss or gradient is not finite — before the update is applied.

    A ``ValueError`` from Pyro's or torch's argument validation is a divergence when the batch's
    loss, recomputed without validation (:func:`unvalidated_loss`), is not finite; otherwise it is
    the model's own error (say, data outside the likelihood's support) and is raised as it is.
    """
    try:
        record = step(x)
    except NonFiniteStep as e:
        raise TrainingDiverged(f"{e} at step {number}; training stopped before the update and "
                               f"{kept_checkpoint(ckpt_path)}") from None
    except ValueError as e:  # argument validation met a bad value before the loss existed
        loss = unvalidated_loss(estimator, model, x)
        if math.isfinite(loss):  # not a divergence: a model error, reported as such
            raise
        raise TrainingDiverged(f"loss became {loss} at step {number} ({str(e).splitlines()[0]}); "
                               f"training stopped and {kept_checkpoint(ckpt_path)}") from None
    if not math.isfinite(record.loss):  # an update that reports a non-finite loss itself
        raise TrainingDiverged(f"loss became {record.loss} at step {number}; training stopped and "
                               f"{kept_checkpoint(ckpt_path)}")
    return record


def unvalidated_loss(estimator, model, x: torch.Tensor) -> float:
    """The batch's loss as the step computes it (gradients on), with Pyro's and torch's argument
    validation off: NaN or infinite when validation stopped the step on non-finite numbers (a
    divergence); finite (0 when it fails without validation too) when it stopped on a model error."""
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # Pyro's "Encountered NaN" is the expected answer here
            return float(estimator.differentiable_loss(model.model, model.guide, x))
    except Exception:  # noqa: BLE001 - any other failure: the model's own error, re-raised by the caller
        return 0.0


def guarded(work, what: str, save, step: int, ckpt_path: str):
    """``work()``; if it fails, ``save()`` the trained state first and raise :class:`EvaluationFailed`
    naming ``what`` failed after step ``step`` and where the state is (or why saving failed too)."""
    try:
        return work()
    except Exception as e:
        try:
            save()
            kept = f"the trained state (step {step}) is saved in {ckpt_path}; continue with --resume"
        except Exception as e2:
            kept = f"saving the checkpoint failed too ({type(e2).__name__}: {e2})"
        msg = str(e).splitlines()[0] if str(e) else ""
        raise EvaluationFailed(f"{what} failed after step {step} ({type(e).__name__}: {msg}); {kept}") from e
