"""Training a hierarchy with Pyro SVI, as named stages (docs/architecture.md): the run's plan
(options: :mod:`.config`; folder and resume: :mod:`.checks`; processes: :mod:`.parallel`), its
data, model and objective, and the loop (:mod:`.trainer`), whose steps (:mod:`.step`) each hand a
:class:`~hlvm.training.step.StepRecord` to the monitor (:mod:`.monitor`), with checkpoints
(:mod:`.checkpoints`); with the single torch optimizer (:mod:`.optim`), the EMA weights
(:mod:`.ema`), the recorded step (:mod:`.compile`, its Pyro internals in :mod:`.pyro_internals`),
KL warm-up (:mod:`.anneal`), free bits (:mod:`.free_bits`), preemption (:mod:`.preemption`) and
what a failed step or evaluation keeps (:mod:`.failures`)."""

from .checkpoints import (CHECKPOINT, CheckpointWriteError, convert_legacy_checkpoint, load_checkpoint,
                          load_run_checkpoint, save_checkpoint)
from .preemption import PREEMPTED_EXIT, Preempted
from .config import TrainConfig
from .step import StepRecord
from .failures import EvaluationFailed, TrainingDiverged
from .trainer import WARMUP_STEPS, Trainer, train

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "EvaluationFailed", "train", "WARMUP_STEPS", "CHECKPOINT",
           "StepRecord", "save_checkpoint", "load_checkpoint", "load_run_checkpoint", "convert_legacy_checkpoint",
           "CheckpointWriteError", "Preempted", "PREEMPTED_EXIT"]
