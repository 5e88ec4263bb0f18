"""Training a hierarchy with Pyro SVI, as named stages (docs/architecture.md): the run's plan
(options, folder, resume: :mod:`.checks`), its data, model and objective, the loop
(:mod:`.trainer`), checkpoints (:mod:`.checkpoints`) and the monitor (:mod:`.monitor`); with the
single torch optimizer (:mod:`.optim`), the recorded step (:mod:`.compile`), KL warm-up
(:mod:`.anneal`) and free bits (:mod:`.free_bits`)."""

from .checkpoints import CHECKPOINT, load_checkpoint, load_run_checkpoint, save_checkpoint
from .trainer import WARMUP_STEPS, EvaluationFailed, TrainConfig, Trainer, TrainingDiverged, train

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "EvaluationFailed", "train", "WARMUP_STEPS", "CHECKPOINT",
           "save_checkpoint", "load_checkpoint", "load_run_checkpoint"]
