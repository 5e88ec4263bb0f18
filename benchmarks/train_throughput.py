"""Training throughput (images/s) of each zoo model through hlvm's own Trainer, on CPU or CUDA.

Each model (``vae``, ``hvae-bu``, ``hvae-td``, ``vdm``; default configs and default estimators)
is built by :class:`hlvm.training.Trainer` on the embedded MNIST subset, then timed for its
training step exactly as ``Trainer.fit`` runs it (next batch → ``svi.step``), without the
progress bar, evaluation or checkpoints.  Models run one after the other (the Trainer clears
Pyro's param store), each warmed up, median over repeats of a block of steps.

    .venv/bin/python benchmarks/train_throughput.py [--device cuda] [--threads 2] [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings

import _common as C  # noqa: I001
import torch

from hlvm.data import load_dataset
from hlvm.training import TrainConfig, Trainer

MODELS = ("vae", "hvae-bu", "hvae-td", "vdm")


def run(args) -> dict:
    device = C.setup(args)
    data = load_dataset("mnist5k")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models.split(","):
            cfg = TrainConfig(model=name, steps=10**9, batch_size=args.batch, device=args.device, seed=args.seed,
                              out=os.path.join(tmp, name), progress=False)
            tr = Trainer(cfg, data=data, log=lambda *a, **k: None)

            def step():
                x = tr._next_batch().to(tr.device, tr.dtype)
                loss = tr.svi.step(x)
                tr.step += 1
                return loss

            for _ in range(args.warmup):
                step()
            times = []
            for _ in range(args.repeats):
                C.sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                C.sync(device)
                times.append((time.perf_counter() - t0) / args.steps)
            sec = statistics.median(times)
            rows[name] = {"estimator": type(tr.estimator).__name__, "ms_per_step": 1e3 * sec,
                          "images_per_s": args.batch / sec,
                          "params": sum(p.numel() for p in tr.model.parameters())}
            print(f"  {name:8s} {rows[name]['estimator']:20s} {rows[name]['ms_per_step']:9.2f} ms/step "
                  f"{rows[name]['images_per_s']:9.1f} images/s")
    info = C.machine_info(device)
    return {"info": info, "batch": args.batch, "repeats": args.repeats, "steps": args.steps, "rows": rows}


def markdown(res: dict, command: str) -> str:
    dev = res["info"].get("gpu", f"CPU, {res['info']['threads']} thread(s)")
    rows = [[k, r["estimator"], f"{r['params'] / 1e6:.2f} M", f"{r['ms_per_step']:.2f}", f"**{r['images_per_s']:.0f}**"]
            for k, r in res["rows"].items()]
    return (f"`{command}` — device: **{dev}**; {C.describe(res['info'])}; batch {res['batch']}, median of "
            f"{res['repeats']} blocks of {res['steps']} Trainer steps.\n\n"
            + C.md_table(["model", "estimator", "parameters", "ms/step", "images/s"], rows))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup = 1, 2, 1
    res = run(args)
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
