"""The options of a training run: one :class:`TrainConfig`, saved inside each checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import validate_config

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved inside each checkpoint; the CLI spells each
    field as an option, ``batch_size`` as ``--batch-size``)."""

    model: str = "vae"
    data: str = "mnist5k"
    binarize: str = "static"
    data_dir: str | None = None
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    #: ``constant`` or ``cosine`` (decay to 0 over the run) after ``lr_warmup`` linear warm-up steps
    #: (:mod:`hlvm.training.lr_schedule`)
    lr_schedule: str = "constant"
    lr_warmup: int = 0
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
    compile: bool = True
    threads: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    #: options of the ELBO estimator's constructor (:class:`~hlvm.DiffusionELBO`: ``sampler``,
    #: ``schedule_objective``, …); the estimator every evaluation of the run uses too
    estimator_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first option out of its range (:func:`hlvm.training.checks.validate_config`)."""
        validate_config(self)

    def steps_per_epoch(self, n_train: int) -> int:
        """The SVI steps of one epoch over ``n_train`` training examples (the last partial batch dropped)."""
        return n_train // self.batch_size

    def total_steps(self, n_train: int) -> int:
        """The SVI steps of the run on ``n_train`` training examples: ``steps``, else ``epochs`` (1 when
        unset) of :meth:`steps_per_epoch` each."""
        if self.steps is not None:
            return self.steps
        return (self.epochs if self.epochs is not None else 1) * self.steps_per_epoch(n_train)
