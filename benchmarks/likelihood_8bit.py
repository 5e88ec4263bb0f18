"""The price of 8-bit data: an SVI step on 8-bit (256-level) images against the same step on binary ones.

Issue 15's goal: an 8-bit VAE step ≤ 3× the binary VAE step (it was 80–100× when the decoder was
a 256-way softmax table per pixel). Contenders, interleaved, batch 128 of the embedded MNIST
subset, each a full ``pyro.infer.SVI`` step with ``hlvm.training.optim.Adam`` and Pyro's defaults:

* ``vae binary`` — VAE 784-400-20, Bernoulli decoder, ``TraceMeanField_ELBO`` (the baseline);
* ``vae 8bit`` — the same on the 8-bit images with the default decoder, the discretized Gaussian
  by CDF differences (:class:`hlvm.programs.discretized.DiscretizedGaussian`, O(D));
* ``vae 8bit, grid softmax`` — the pre-issue-15 decoder (``Discretized8bitLikelihood(decoder="grid")``,
  a categorical over the 256 values per pixel), the "before" of the same run;
* with ``--models vae,vdm``: ``vdm binary`` / ``vdm 8bit`` (``DiffusionELBO``), VDM's own decoder
  p(x | z_0) summed over its window of ~7 grid values.

Each thread count of ``--thread-list`` is a separate interleaved run in the same process.

    .venv/bin/python benchmarks/likelihood_8bit.py [--thread-list 1,2] [--repeats 9] [--models vae,vdm]
"""

from __future__ import annotations

import warnings

import _common as C  # noqa: I001  (puts the repository root on sys.path)
import torch

from _steps import build, default_elbo, svi_step
from hlvm.data import load_dataset
from hlvm.programs.likelihoods import Discretized8bitLikelihood

GOAL = 3.0
SHAPE = (1, 28, 28)


def contenders(models, x_bin, x_8bit, device) -> dict:
    c = {}
    if "vae" in models:
        for name, lik, x in (("vae binary", "binary", x_bin), ("vae 8bit", "8bit", x_8bit),
                             ("vae 8bit, grid softmax", Discretized8bitLikelihood(SHAPE, decoder="grid"), x_8bit)):
            c[name] = svi_step(build("vae", device, likelihood=lik), default_elbo("vae"), x)
    if "vdm" in models:
        for name, lik, x in (("vdm binary", "binary", x_bin), ("vdm 8bit", "8bit", x_8bit)):
            c[name] = svi_step(build("vdm", device, likelihood=lik), default_elbo("vdm"), x)
    return c


BASES = {"vae 8bit": "vae binary", "vae 8bit, grid softmax": "vae binary", "vdm 8bit": "vdm binary"}


def run(args) -> dict:
    device = C.setup(args)
    x_bin = load_dataset("mnist5k").train[: args.batch].to(device)
    x_8bit = load_dataset("mnist5k", binarize="8bit").train[: args.batch].to(device)
    out = {"batch": args.batch, "repeats": args.repeats, "goal": GOAL, "threads": {}}
    for n in (int(t) for t in args.thread_list.split(",")):
        torch.set_num_threads(n)
        torch.manual_seed(args.seed)
        cs = contenders(args.models.split(","), x_bin, x_8bit, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = C.interleaved(cs, repeats=args.repeats, inner=1, warmup=2, device=device, min_block_s=args.block)
        rows = {k: {"ms": 1e3 * t[k].median} for k in cs}
        for k, base in BASES.items():
            if k in rows:
                rows[k].update(base=base, ratio=C.ratio(t, k, base), iqr=list(C.ratio_iqr(t, k, base)),
                               ratio_cpu=C.ratio(t, k, base, cpu=True))
        out["threads"][str(n)] = {"info": C.machine_info(device), "rows": rows}
        print(f"\n{n} thread(s)")
        for k, r in rows.items():
            extra = f"  {r['ratio']:8.2f}× {r['base']} (CPU-time {r['ratio_cpu']:.2f}×)" if "ratio" in r else ""
            print(f"  {k:26s} {r['ms']:9.2f} ms{extra}")
    out["info"] = dict(next(iter(out["threads"].values()))["info"], threads=args.thread_list)
    vae = [v["rows"]["vae 8bit"]["ratio"] for v in out["threads"].values() if "vae 8bit" in v["rows"]]
    out["met"] = bool(vae) and max(vae) <= GOAL
    return out


def markdown(res: dict, command: str) -> str:
    rows = []
    for n, v in res["threads"].items():
        for k, r in v["rows"].items():
            if "ratio" not in r:
                continue
            goal = f"≤ {res['goal']:.0f}× — {'met' if r['ratio'] <= res['goal'] else 'missed'}" if k == "vae 8bit" else ""
            rows.append([n, k, r["base"], f"{r['ms']:.2f} / {v['rows'][r['base']]['ms']:.2f}", f"**{r['ratio']:.2f}**",
                         f"{r['iqr'][0]:.2f}–{r['iqr'][1]:.2f}", f"{r['ratio_cpu']:.2f}", goal])
    head = ["threads", "8-bit step", "vs", "ms/step (8-bit / binary)", "ratio (median)", "IQR", "CPU-time ratio", "goal"]
    return (f"`{command}` — {C.describe(res['info'])}, batch {res['batch']}, {res['repeats']} interleaved repeats. "
            "`vae 8bit` is the default decoder (discretized Gaussian by CDF differences, O(D)); `grid softmax` the "
            "pre-issue-15 256-way table, measured in the same run.\n\n" + C.md_table(head, rows))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=9)
    p.add_argument("--thread-list", default="1,2", help="thread counts, one interleaved run each (default 1,2)")
    p.add_argument("--models", default="vae,vdm")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--block", type=float, default=0.05, help="least seconds per timed block")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.block, args.batch = min(args.repeats, 2), 0.0, 32
    res = run(args)
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
