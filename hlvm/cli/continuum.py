"""``hlvm continuum --profile cpu|smoke``: the HVAE → diffusion continuum measured
(``make continuum``; see :mod:`hlvm.reports.continuum`).  Resumable: rerun to continue."""

__all__ = ["register", "run"]


def register(sub):
    p = sub.add_parser("continuum", help="train every depth of the VAE → VDM continuum; write docs/continuum.md (long)")
    p.add_argument("--profile", default="cpu", choices=["cpu", "smoke"])
    p.add_argument("--out", default="docs", help="folder for continuum.json, continuum.md and the figure")
    p.add_argument("--runs", default="runs/continuum", help="folder for the training runs (checkpoints)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's)")
    p.set_defaults(func=run)


def run(args):
    from hlvm.reports.continuum import run_continuum

    run_continuum(args.profile, args.out, args.runs, threads=args.threads)
