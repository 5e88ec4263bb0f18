"""``hlvm sample MODEL --checkpoint PATH``: a PNG grid of samples from a trained model."""

from __future__ import annotations

import os


def register(sub):
    p = sub.add_parser("sample", help="a PNG grid of samples from a checkpoint")
    p.add_argument("model", help="vae | hvae-bu | hvae-td | vdm | path/to/file.py:ClassName")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (VDM; default T or 1000)")
    p.add_argument("--langevin", action="store_true", help="VDM: predictor-corrector annealed Langevin")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def load_trained(model: str, checkpoint: str, device: str = "cpu"):
    """Rebuild a model from a checkpoint's config and weights (EMA weights when present)."""
    from hlvm.train import load_checkpoint
    from hlvm.registry import build_model

    ck = load_checkpoint(checkpoint, map_location=device)
    cfg = ck["config"]
    if cfg["model"] != model:
        raise ValueError(f"checkpoint holds model {cfg['model']!r}, not {model!r}")
    d = ck["data"]
    m = build_model(model, d["shape"], d["kind"], T=cfg["T"], layers=cfg["layers"], **cfg.get("model_kwargs", {}))
    m.load_state_dict(ck["ema"] if ck.get("ema") else ck["model"])
    return m.to(device).eval(), ck


def run(args):
    import pyro
    import torch

    from hlvm.plots import save_grid
    from hlvm.programs.chain import chains_of
    from hlvm.programs.sample import draw

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    m, ck = load_trained(args.model, args.checkpoint, args.device)
    pyro.set_rng_seed(args.seed)
    with torch.no_grad():
        if args.langevin:
            if not hasattr(m, "langevin_sample"):
                raise ValueError(f"{args.model} has no score to run Langevin dynamics with")
            x = m.langevin_sample(args.n, steps=args.steps or 100)
        else:
            if args.steps is not None and not chains_of(m):
                raise ValueError("--steps applies to models with a diffusion chain only")
            x = draw(m, args.n, steps=args.steps)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_grid(x.reshape(args.n, *ck["data"]["shape"]), args.out, ck["data"]["kind"])
    print(f"wrote {args.out} ({args.n} samples)")
