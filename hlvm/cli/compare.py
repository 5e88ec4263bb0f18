"""``hlvm compare --models vae,hvae-bu,hvae-td,vdm --data mnist5k``: one budget, one table."""

from __future__ import annotations

from hlvm.cli.train import add_common, config_from, given_options

__all__ = ["DEFAULT_MODELS", "register", "add_arguments", "run"]

DEFAULT_MODELS = "vae,hvae-bu,hvae-td,vdm"


def register(sub):
    p = sub.add_parser("compare", help="train several models under one budget and compare their bounds")
    add_arguments(p)
    p.set_defaults(func=run, steps=None)


def add_arguments(p):
    """The options of ``compare`` (shared with ``demo``, which only changes their defaults)."""
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated zoo names or file.py:Class, each "
                   "with its constructor options in parentheses if any, e.g. --models "
                   "'vae,vdm(schedule=cosine,width=512)' (quoted for the shell; values as in hlvm train --set, "
                   "tuples too: fourier=(7,8)); each row is named so")
    add_common(p)
    p.add_argument("--K", type=int, default=50, help="importance samples for the IWAE bound and its Pareto k̂: "
                   "0 (skip) or >= 30 (k̂ fits its tail to ⌊K/5⌋ >= 6 weights)")
    p.add_argument("--iwae-examples", type=int, default=100)
    p.add_argument("--pfode-examples", type=int, default=100,
                   help="test images for the probability-flow ODE bound of diffusion models (0: skip)")
    p.add_argument("--pfode-samples", type=int, default=1, help="draws of z_0 ~ q(z_0|x) per image for the PF-ODE bound")
    p.add_argument("--out", default="reports/compare", help="report folder (an earlier report there is replaced)")
    p.add_argument("--no-render", action="store_true", help="skip the plate diagrams")


def run(args):
    import sys

    from hlvm.limits import parse_model, split_models
    from hlvm.reports.compare import run_compare
    from hlvm.training import EvaluationFailed, TrainingDiverged

    models = [parse_model(m) for m in split_models(args.models)]  # a malformed entry: ValueError, exit 2
    if args.steps is None and args.epochs is None:
        args.steps = 400
    base = config_from(args, models[0][0] if models else "vae", args.out, recipe=False)  # recipes: per model
    try:
        run_compare(models, base, args.out, fixed=given_options(args), K=args.K, iwae_examples=args.iwae_examples, eval_examples=base.eval_examples,
                    pfode_examples=args.pfode_examples, pfode_samples=args.pfode_samples, render=not args.no_render)
    except (TrainingDiverged, EvaluationFailed) as e:  # after training started: exit 1, where the work is kept
        print(f"hlvm compare: {e}", file=sys.stderr)
        raise SystemExit(1)
