"""``hlvm results --profile cpu|gpu|smoke``: the zoo on full MNIST beside the published numbers
(``make results``; see :mod:`hlvm.reports.results`).  Resumable: rerun to continue."""

__all__ = ["register", "run"]


def register(sub):
    p = sub.add_parser("results", help="train and evaluate the zoo on full MNIST; write docs/results.md (long)")
    p.add_argument("--profile", default="cpu", choices=["cpu", "gpu", "smoke"])
    p.add_argument("--out", default="docs", help="folder for results.json, results.md and figures")
    p.add_argument("--runs", default="runs/results", help="folder for the training runs (checkpoints)")
    p.add_argument("--device", default=None, help="default: the profile's (cpu; cuda for gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's, recorded)")
    p.set_defaults(func=run)


def run(args):
    from hlvm.reports.results import run_results

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    run_results(args.profile, args.out, args.runs, device=args.device, threads=args.threads)
