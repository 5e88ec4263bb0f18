"""DiffusionELBO: step time and peak memory do not grow with the number of steps T.

One ``VDM`` (default MLP denoiser) trains through ``pyro.infer.SVI`` + ``DiffusionELBO`` with
T = 10, 100, 1000 and continuous time (T = None), side by side: the same model instance and
batch, only ``model.chain.T`` switched before each contender's step.  Peak memory of one step
(forward + backward + Adam) is measured above the level before the step: on CUDA with
``torch.cuda.max_memory_allocated``, on CPU from the profiler's allocator events.
For contrast (``--stock``), stock ``TraceMeanField_ELBO`` on the unrolled T = 10 Pyro program
(T denoiser calls per step).

Goal (issue 6): all DiffusionELBO rows within 1.05× of each other, in time and in memory.

    .venv/bin/python benchmarks/diffusion_T.py [--threads 2] [--repeats 15] [--device cpu] [--stock]
"""

from __future__ import annotations

import warnings

import _common as C  # noqa: I001
import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from _steps import ValidationSwitch, build, plain_loss_fn, plain_step
import hlvm.training.optim
from hlvm import DiffusionELBO
from hlvm.data import load_dataset

GOAL = 1.05


def t_label(T):
    return "continuous" if T is None else f"T = {T}"


def svi_at(model, T, x, elbo, validation=True):
    """An SVI step (``hlvm.training.optim.Adam``, as ``hlvm train``) with the chain switched to ``T``."""
    svi = SVI(model.model, model.guide, hlvm.training.optim.Adam({"lr": 1e-3}), elbo)

    def step():
        model.chain.T = T
        with ValidationSwitch(validation):
            return svi.step(x)

    return step


def run(args) -> dict:
    device = C.setup(args)
    data = load_dataset("mnist5k")
    x = data.train[: args.batch].to(device)
    pyro.clear_param_store()
    model = build("vdm", device, width=args.width)
    Ts = [10, 100, 1000, None]
    cs = {t_label(T): svi_at(model, T, x, DiffusionELBO()) for T in Ts}
    plain = plain_step(model, plain_loss_fn("vdm", model), x)

    def plain_continuous():
        model.chain.T = None
        return plain()

    cs["plain step (continuous)"] = plain_continuous
    if args.stock:
        cs["stock TraceMeanField_ELBO, unrolled T = 10"] = svi_at(model, 10, x, TraceMeanField_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = C.interleaved(cs, repeats=args.repeats, inner=2, warmup=3, device=device, min_block_s=args.block)
        mem = {}
        for k, fn in cs.items():
            mem[k] = C.peak_memory(fn, device)
    model.chain.T = None
    base = "continuous"
    rows = {k: {"ms": 1e3 * t[k].median, "ratio": C.ratio(t, k, base), "ratio_cpu": C.ratio(t, k, base, cpu=True),
                "iqr": list(C.ratio_iqr(t, k, base)), "peak_mib": C.mib(mem[k]), "mem_ratio": mem[k] / mem[base]}
            for k in cs}
    elbo_rows = [rows[t_label(T)] for T in Ts]
    spread_t = max(r["ratio"] for r in elbo_rows) / min(r["ratio"] for r in elbo_rows)
    spread_m = max(r["peak_mib"] for r in elbo_rows) / min(r["peak_mib"] for r in elbo_rows)
    res = {"info": C.machine_info(device), "batch": args.batch, "repeats": args.repeats, "width": args.width,
           "rows": rows, "spread_time": spread_t, "spread_memory": spread_m,
           "met_time": spread_t <= GOAL, "met_memory": spread_m <= GOAL}
    print(f"\nVDM (MLP width {args.width}) + DiffusionELBO through SVI, batch {args.batch}; ratios vs continuous time")
    print(f"  {'':44s} {'ms/step':>9s} {'ratio':>7s} {'IQR':>13s} {'CPU ratio':>9s} {'peak MiB':>9s} {'mem ratio':>9s}")
    for k, r in rows.items():
        print(f"  {k:44s} {r['ms']:9.2f} {r['ratio']:7.3f} {r['iqr'][0]:6.3f}-{r['iqr'][1]:<6.3f} {r['ratio_cpu']:9.3f} "
              f"{r['peak_mib']:9.1f} {r['mem_ratio']:9.3f}")
    print(f"  max/min over T ∈ {{10, 100, 1000, ∞}}: time {spread_t:.3f}×, memory {spread_m:.3f}× "
          f"(goal ≤ {GOAL}: time {'MET' if res['met_time'] else 'MISSED'}, memory {'MET' if res['met_memory'] else 'MISSED'})")
    return res


def markdown(res: dict, command: str) -> str:
    rows = [[k, f"{r['ms']:.2f}", f"**{r['ratio']:.3f}**", f"{r['iqr'][0]:.2f}–{r['iqr'][1]:.2f}", f"{r['ratio_cpu']:.3f}",
             f"{r['peak_mib']:.1f}", f"{r['mem_ratio']:.3f}"] for k, r in res["rows"].items()]
    head = ["DiffusionELBO step", "ms/step", "time ratio (median)", "IQR", "CPU-time ratio", "peak MiB", "memory ratio"]
    return (f"`{command}` — {C.describe(res['info'])}, VDM MLP width {res['width']}, batch {res['batch']}, "
            f"{res['repeats']} interleaved repeats; ratios vs continuous time.\n\n" + C.md_table(head, rows)
            + f"\n\nSpread (max/min over T = 10, 100, 1000, ∞): time **{res['spread_time']:.3f}×**, "
              f"peak memory **{res['spread_memory']:.3f}×** (goal ≤ {GOAL}×: time "
              f"{'met' if res['met_time'] else 'missed'}, memory {'met' if res['met_memory'] else 'missed'}).")


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=512, help="MLP denoiser width (VDM default 512)")
    p.add_argument("--block", type=float, default=0.05)
    p.add_argument("--stock", action="store_true", help="also time stock TraceMeanField_ELBO on the unrolled T=10 chain")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.block = 0.0
    res = run(args)
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
