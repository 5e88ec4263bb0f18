"""Sampling throughput (images/s) against the number of steps.

``VDM.sample(n, steps)`` (ancestral sampling, one batched denoiser call per step) at 10, 100 and
1000 steps, ``VDM.langevin_sample`` (predictor–corrector, two denoiser calls per level) at 100,
and one ancestral pass of ``VAE``, ``BottomUpHVAE`` and ``TopDownHVAE`` — all default configs,
untrained (throughput does not depend on the weights), timed side by side under ``no_grad``.

Expected: VDM images/s ∝ 1/steps (constant time per denoiser call).

    .venv/bin/python benchmarks/sampling.py [--n 100] [--threads 2] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import _common as C  # noqa: I001
from _steps import PINNED
import torch

import hlvm
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE


def run(args) -> dict:
    device = C.setup(args)
    steps_list = [int(s) for s in args.steps.split(",")]
    vdm = VDM(**PINNED["vdm"]).to(device).eval()
    cs, calls = {}, {}
    for s in steps_list:
        cs[f"VDM ancestral, {s} steps"] = (lambda s=s: vdm.sample(args.n, steps=s))
        calls[f"VDM ancestral, {s} steps"] = s
    if args.langevin:
        s = args.langevin
        cs[f"VDM predictor-corrector, {s} steps"] = (lambda: vdm.langevin_sample(args.n, steps=s))
        calls[f"VDM predictor-corrector, {s} steps"] = 2 * s + 1
    for name, cls, key in (("VAE", VAE, "vae"), ("BottomUpHVAE", BottomUpHVAE, None), ("TopDownHVAE", TopDownHVAE, "hvae-td")):
        m = cls(**PINNED.get(key, {})).to(device).eval()
        cs[f"{name}, one pass"] = (lambda m=m: hlvm.sample(m, args.n))
        calls[f"{name}, one pass"] = None
    with torch.no_grad():
        t = C.interleaved(cs, repeats=args.repeats, inner=1, warmup=1, device=device)
    rows = {}
    for k in cs:
        sec = t[k].median
        rows[k] = {"seconds": sec, "images_per_s": args.n / sec,
                   "ms_per_denoiser_call": 1e3 * sec / calls[k] if calls[k] else None}
    res = {"info": C.machine_info(device), "n": args.n, "repeats": args.repeats, "rows": rows}
    print(f"\nSampling {args.n} images (default configs, untrained), median of {args.repeats} side-by-side repeats")
    print(f"  {'':40s} {'s/batch':>9s} {'images/s':>10s} {'ms/denoiser call':>17s}")
    for k, r in rows.items():
        per = f"{r['ms_per_denoiser_call']:17.2f}" if r["ms_per_denoiser_call"] else f"{'':17s}"
        print(f"  {k:40s} {r['seconds']:9.3f} {r['images_per_s']:10.1f} {per}")
    return res


def markdown(res: dict, command: str) -> str:
    rows = [[k, f"{r['seconds']:.3f}", f"**{r['images_per_s']:.1f}**",
             f"{r['ms_per_denoiser_call']:.2f}" if r["ms_per_denoiser_call"] else "—"] for k, r in res["rows"].items()]
    return (f"`{command}` — {C.describe(res['info'])}, {res['n']} images per call, median of {res['repeats']} "
            "side-by-side repeats, untrained default models.\n\n"
            + C.md_table(["sampler", "s per batch", "images/s", "ms per denoiser call"], rows))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--n", type=int, default=100, help="images per call")
    p.add_argument("--steps", default="10,100,1000")
    p.add_argument("--langevin", type=int, default=100, help="predictor-corrector steps (0: skip)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.n = min(args.n, 16)
        args.steps = "10,100"
        args.langevin = min(args.langevin, 10)
    res = run(args)
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
