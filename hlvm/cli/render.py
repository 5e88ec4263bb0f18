"""``hlvm render``: plate diagrams of a zoo model or a user's hierarchy, model and guide side by side.

    hlvm render vdm --T 1000 --out docs --format svg
    hlvm render all --out docs --format png            # the README's four diagrams (make render)
    hlvm render examples/user_hierarchy.py:LatentDiffusionVAE --T 4
    hlvm render my_vae.py:VAE --data mnist          # a Pyro program without data_shape: traced on MNIST

See :mod:`hlvm.graph` (De Sousa Ribeiro & Glocker, Figures 2 and 5).
"""

from __future__ import annotations

from pathlib import Path

from hlvm.limits import DATASETS, parse_options

from .train import add_model_options

__all__ = ["register", "run"]


def _steps(text: str):
    """``--T``: a positive integer, or ``inf``/``none`` for continuous time."""
    if text.lower() in ("inf", "none", "continuous"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--T must be a positive integer or 'inf', got {text!r}") from None
    if value < 1:
        raise ValueError(f"--T must be a positive integer or 'inf', got {text!r}")
    return value


def _examples(module, data):
    """The data set's first two test examples in the module's floating dtype."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    return data.test[:2] if dtype is None else data.test[:2].to(dtype)


def register(sub):
    p = sub.add_parser("render", help="plate diagrams of model and guide side by side",
                       description="Render a model/guide pair: a zoo name (vae, hvae-bu, hvae-td, vdm), "
                                   "'all' for the four, or path/to/file.py:ClassName.")
    p.add_argument("model", help="vae | hvae-bu | hvae-td | vdm | all | path/to/file.py:ClassName")
    p.add_argument("--T", default="4", help="diffusion steps (an integer, or 'inf' for continuous time; default 4)")
    p.add_argument("--layers", type=int, default=3, help="stochastic layers of the hierarchical VAEs, 1..100 (default 3)")
    p.add_argument("--data", default=None, choices=DATASETS,
                   help="trace the programs on this data set's first test examples (its shape and representation; "
                        "default: zeros of the model's data_shape, MNIST-shaped for the zoo)")
    add_model_options(p)
    p.add_argument("--out", default=".", help="output folder (created if missing; not a file; default .)")
    p.add_argument("--format", default="svg", choices=("svg", "png", "pdf", "dot"))
    p.add_argument("--distributions", action="store_true", help="label every site with its distribution")
    p.add_argument("--full", action="store_true", help="draw every step of long chains (chains of at most 100 steps)")
    p.set_defaults(func=run)


def run(args):
    from hlvm.graph import render_module
    from hlvm.graph.draw import FULL_MAX_STEPS
    from hlvm.registry import build_model, names
    from hlvm.training.checks import writable_folder
    from hlvm.validate import check_int

    T = _steps(str(args.T))
    check_int("--layers", args.layers, 1, FULL_MAX_STEPS)  # every layer is drawn: Graphviz needs minutes above
    writable_folder(args.out, "the diagrams")  # an existing file, or a file on the way: one line, before any work
    specs = names() if args.model == "all" else (args.model,)
    data = None
    if args.data is not None:
        from hlvm.data import load_dataset
        data = load_dataset(args.data)
    options = parse_options(args.model_options or ())
    if options and len(specs) > 1:
        raise ValueError("--set applies to one model: name it instead of 'all'")
    for spec in specs:
        shape, kind = (None, None) if data is None else (data.shape, data.kind)
        module = build_model(spec, shape, kind=kind, T=T, layers=args.layers, strict=False, **options)
        stem = type(module).__name__ if ":" in spec else spec
        ext = "dot" if args.format == "dot" else args.format
        path = Path(args.out) / f"{stem}.{ext}"
        render_module(module, filename=path, format=args.format, distributions=args.distributions,
                      compact=not args.full, x=None if data is None else _examples(module, data))
        print(path)
