"""IWAE cost: seconds per 1,000 test images at K = 50, 1,000 and 5,000 importance samples.

The zoo VAE (784-400-20, untrained: the cost does not depend on the weights) on the embedded
MNIST subset, as :func:`hlvm.evaluate` runs it (``torch.no_grad``, eval mode). Contenders,
interleaved, on the same images:

* ``now`` — :func:`hlvm.eval.per_example_log_weights` with its memory-bounded passes
  (:mod:`hlvm.eval.chunking`: on CPU ~16 MiB a pass; the first pass validated, the others not);
* ``former`` — the rule before issue 15, re-created here with the same pass function: passes of
  ⌊8,192 / B⌋ draws of the whole batch (~8,192 rows), every pass validated.

Each K runs on few images (K · images rows per call) and reports seconds per 1,000 images, with
the peak memory of one call above the level before it (the CPU allocator, as torch's profiler
counts it) and the rows per pass.

    .venv/bin/python benchmarks/iwae.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import warnings

import _common as C  # noqa: I001  (puts the repository root on sys.path)
import pyro
import torch

from _steps import build
from hlvm.data import load_dataset
from hlvm.eval import per_example_log_weights
from hlvm.eval import weights as W

IMAGES = {50: 100, 1000: 20, 5000: 4}
FORMER_ROWS = 8192


def former(model, x, K):
    """The pre-issue-15 loop: ⌊8192 / B⌋ draws of the whole batch per pass, each pass validated."""
    b = x.shape[0]
    chunk = max(1, FORMER_ROWS // b)
    out = []
    for start in range(0, K, chunk):
        k = min(chunk, K - start)
        xx = x.repeat((k,) + (1,) * (x.dim() - 1))
        out.append(-W.per_site_terms(model.model, model.guide, xx, plate="data")["total"].reshape(k, b))
    return torch.cat(out, 0)


def rows_now(model, x) -> int:
    return W.rows_per_pass(W._bytes_per_row(model.model, model.guide, x, "data"), W.check_memory(None, x.device), x.device)


def run(args) -> dict:
    device = C.setup(args)
    data = load_dataset("mnist5k")
    with pyro.settings.context(module_local_params=True):
        model = build("vae", device).eval()
    rows = {}
    for K, n in IMAGES.items():
        n = max(1, n // 4) if args.quick else n
        x = data.test[:n].to(device)
        cs = {"now": lambda: per_example_log_weights(model, None, x, K), "former": lambda: former(model, x, K)}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = C.interleaved(cs, repeats=args.repeats, inner=1, warmup=1, device=device)
            peak = {k: C.peak_memory(fn, device) for k, fn in cs.items()}
            r_now = rows_now(model, x)
        rows[K] = {"images": n, "rows_now": min(r_now, K * n), "rows_former": min(K, max(1, FORMER_ROWS // n)) * n}
        for k in cs:
            rows[K][k] = {"s_per_1000": 1000 * t[k].median / n, "peak_mib": C.mib(peak[k])}
        rows[K]["ratio"] = C.ratio(t, "former", "now")
        print(f"K={K:5d} ({n} images): now {rows[K]['now']['s_per_1000']:8.2f} s/1000 images "
              f"({rows[K]['rows_now']} rows a pass, peak {rows[K]['now']['peak_mib']:.0f} MiB) | former "
              f"{rows[K]['former']['s_per_1000']:8.2f} s ({rows[K]['rows_former']} rows, peak "
              f"{rows[K]['former']['peak_mib']:.0f} MiB) | former/now {rows[K]['ratio']:.2f}×", flush=True)
    return {"info": C.machine_info(device), "repeats": args.repeats, "rows": {str(k): v for k, v in rows.items()}}


def markdown(res: dict, command: str) -> str:
    table = [[K, r["images"], f"**{r['now']['s_per_1000']:.1f}**", f"{r['former']['s_per_1000']:.1f}", f"{r['ratio']:.2f}×",
              f"{r['rows_now']} / {r['rows_former']}", f"{r['now']['peak_mib']:.0f} / {r['former']['peak_mib']:.0f}"]
             for K, r in res["rows"].items()]
    head = ["K", "images timed", "s per 1,000 images (now)", "former", "former / now", "rows a pass (now / former)",
            "peak MiB (now / former)"]
    return (f"`{command}` — {C.describe(res['info'])}, VAE 784-400-20, {res['repeats']} interleaved repeats; "
            "`former` = the pre-issue-15 rule (8,192 rows a pass, every pass validated).\n\n" + C.md_table(head, table))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=5)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    res = run(args)
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
