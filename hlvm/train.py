"""``hlvm.train``, kept for code written before the training package: the same objects as
:mod:`hlvm.training`, where they live."""

from .training import (CHECKPOINT, WARMUP_STEPS, EvaluationFailed, TrainConfig, Trainer, TrainingDiverged,
                       load_checkpoint, load_run_checkpoint, save_checkpoint, train)

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "EvaluationFailed", "train", "WARMUP_STEPS", "CHECKPOINT",
           "save_checkpoint", "load_checkpoint", "load_run_checkpoint"]
