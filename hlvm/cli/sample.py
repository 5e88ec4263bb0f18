"""``hlvm sample MODEL --checkpoint PATH``: a PNG grid of samples from a trained model.

Options are checked before the checkpoint is read: ``--n`` and ``--steps`` positive, ``--device``
present on this machine, ``--out`` an image file name (an existing directory, or a name ending in
``/``, gets ``samples.png`` inside it).
"""

from __future__ import annotations

import os

from hlvm.limits import model_label

__all__ = ["register", "run", "load_trained", "rebuild", "output_path", "DEFAULT_NAME"]

#: the file written inside a directory given as ``--out``
DEFAULT_NAME = "samples.png"


def register(sub):
    p = sub.add_parser("sample", help="a PNG grid of samples from a checkpoint")
    p.add_argument("model", help="vae | hvae-bu | hvae-td | vdm | path/to/file.py:ClassName")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p.add_argument("--n", type=int, default=64, help="number of samples, >= 1 (default 64)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps, >= 1 (VDM; default T, or 1000 in continuous time; --langevin: 100)")
    p.add_argument("--langevin", action="store_true", help="VDM: predictor-corrector annealed Langevin")
    p.add_argument("--out", default=DEFAULT_NAME,
                   help=f"image file (.png, .jpg, ...); a directory gets {DEFAULT_NAME} inside it (default {DEFAULT_NAME})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(func=run)


def load_trained(model: str, checkpoint: str, device: str = "cpu"):
    """Rebuild a model from a checkpoint's config — with the options it was trained with
    (``model_kwargs``) — and its weights (EMA weights when present)."""
    from hlvm.training.checkpoints import load_run_checkpoint
    from hlvm.registry import load_class

    load_class(model)  # a bad name or a broken model file is reported before the checkpoint is read
    ck = load_run_checkpoint(checkpoint, map_location=device)  # a foreign torch file: a clear error
    if ck["config"]["model"] != model:
        raise ValueError(f"checkpoint holds model {ck['config']['model']!r}, not {model!r}")
    return rebuild(ck, device), ck


def rebuild(ck: dict, device: str = "cpu"):
    """The trained model of a run checkpoint ``ck``: built by its config's model name (registry
    name or ``file.py:Class``), data shape and kind, ``T``, ``layers`` and ``model_kwargs``, with
    the EMA weights when the run kept them, else the live ones; on ``device``, in eval mode."""
    from hlvm.registry import build_model

    cfg, d = ck["config"], ck["data"]
    m = build_model(cfg["model"], d["shape"], d["kind"], T=cfg["T"], layers=cfg["layers"], **cfg.get("model_kwargs", {}))
    m.load_state_dict(ck["ema"] if ck.get("ema") else ck["model"])
    return m.to(device).eval()


def output_path(out: str) -> str:
    """The image file ``--out`` names: ``DEFAULT_NAME`` inside a directory; ValueError for a suffix
    no image writer knows."""
    from PIL import Image

    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        out = os.path.join(out, DEFAULT_NAME)
    suffix = os.path.splitext(out)[1].lower()
    known = Image.registered_extensions()
    if suffix not in known:
        raise ValueError(f"--out {out!r}: unknown image file extension {suffix or '(none)'!r}; "
                         f"use .png (or .jpg, .bmp, .tif, ...) or an existing directory")
    return out


def run(args):
    import pyro
    import torch

    from hlvm.reports.plots import save_grid
    from hlvm.programs.chain import chains_of
    from hlvm.programs.sample import draw
    from hlvm.validate import check_device, check_int

    check_int("--n", args.n, 1)
    if args.steps is not None:
        check_int("--steps", args.steps, 1)
    check_int("--seed", args.seed, 0, 2**32 - 1)
    check_device("--device", args.device)
    out = output_path(args.out)
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
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_grid(x.reshape(args.n, *ck["data"]["shape"]), out, ck["data"]["kind"])
    print(f"wrote {out} ({args.n} samples of {model_label(args.model, ck['config'].get('model_kwargs'))})")
