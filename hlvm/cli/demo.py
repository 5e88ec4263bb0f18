"""``hlvm demo``: the main job on the embedded data (see :mod:`hlvm.demo`)."""


def register(sub):
    d = sub.add_parser("demo", help="the main job on the embedded MNIST subset")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run)


def run(args):
    from hlvm.demo import run_demo

    run_demo(batch_size=args.batch_size, seed=args.seed)
