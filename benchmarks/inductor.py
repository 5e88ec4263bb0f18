"""Beyond eager: ``torch.compile`` (inductor) on the recorded step's graph, against plain eager PyTorch.

The recorded step (:mod:`hlvm.training.compile`) is a flat ATen graph with the parameters as inputs —
what a fusing compiler wants.  For each model (the zoo defaults at batch 128 on the embedded MNIST
subset, their default estimators, as ``step_overhead.py``) this measures:

* ``compile_s``: the seconds of the first call of ``torch.compile(graph)`` (inductor's code
  generation and C++ build) minus one eager call of the graph;
* ``eager_ms`` / ``recorded_ms`` / ``inductor_ms``: the loss-and-gradient computation per step of the
  hand-written plain PyTorch loss (_steps.py), of the recorded graph replayed eagerly, and of the
  compiled graph (medians of interleaved repeats; the optimizer update, equal for all, left out);
* ``ratio``: inductor_ms / eager_ms (goal ≤ 0.85 for the VDM and the top-down HVAE);
* ``break_even_steps``: compile_s / (recorded − inductor seconds per step) — the steps after which
  the compilation has paid for itself, against the recorded step it would replace; and its share of
  a 20-epoch run on full MNIST (9,375 steps at batch 128).

    .venv/bin/python benchmarks/inductor.py [--threads 1] [--repeats 10] [--models vae,hvae-td,vdm]
"""

from __future__ import annotations

import time

import _common as C  # noqa: I001  (puts the repository root on sys.path)
import torch

from _steps import build, default_elbo, plain_loss_fn
from hlvm.data import load_dataset
from hlvm.training.compile import RecordedLoss

STEPS_20_EPOCHS = 20 * 60_000 // 128


def _recorded_graph(model, name, x):
    rec = RecordedLoss(model.model, model.guide, default_elbo(name), check_every=10**9, log=lambda m: None)
    rec(x)
    if rec.fallback is not None:
        raise SystemExit(f"{name}: the step does not record ({rec.fallback})")
    (graph, params), = rec.records.values()
    return graph, params


def _plain(model, name, x):
    loss_fn = plain_loss_fn(name, model)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        loss = loss_fn(x)
        return torch.autograd.grad(loss, params, allow_unused=True)
    return step


def run(args) -> dict:
    C.setup(args)
    x = load_dataset("mnist5k").train[:args.batch].float()
    rows = {}
    for name in args.models.split(","):
        model = build(name, torch.device("cpu"))
        graph, params = _recorded_graph(model, name, x)
        with torch.no_grad():
            start = time.perf_counter()
            graph(params, [x])
            eager_one = time.perf_counter() - start
            compiled = torch.compile(graph, backend="inductor")
            start = time.perf_counter()
            compiled(params, [x])
            compile_s = time.perf_counter() - start - eager_one
        plain = _plain(model, name, x)

        def recorded():
            with torch.no_grad():
                return graph(params, [x])

        def inductor():
            with torch.no_grad():
                return compiled(params, [x])
        t = C.interleaved({"plain": plain, "recorded": recorded, "inductor": inductor}, args.repeats)
        ms = {k: 1e3 * t[k].median for k in t}
        gain = (ms["recorded"] - ms["inductor"]) / 1e3
        even = compile_s / gain if gain > 0 else float("inf")
        rows[name] = {"compile_s": compile_s, "eager_ms": ms["plain"], "recorded_ms": ms["recorded"],
                      "inductor_ms": ms["inductor"], "ratio": ms["inductor"] / ms["plain"],
                      "recorded_ratio": ms["recorded"] / ms["plain"], "break_even_steps": even,
                      "compile_share_20_epochs": compile_s / (compile_s + STEPS_20_EPOCHS * ms["inductor"] / 1e3)}
        r = rows[name]
        print(f"{name:8s} compile {r['compile_s']:6.1f} s  plain {r['eager_ms']:7.2f} ms  recorded {r['recorded_ms']:7.2f} ms"
              f"  inductor {r['inductor_ms']:7.2f} ms  ratio {r['ratio']:.3f}  break-even {r['break_even_steps']:.0f} steps"
              f"  ({100 * r['compile_share_20_epochs']:.1f}% of 20 epochs)", flush=True)
    return {"info": C.machine_info(torch.device("cpu")), "batch": args.batch, "repeats": args.repeats, "models": rows}


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=10)
    p.add_argument("--models", default="vae,hvae-td,vdm")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    res = run(args)
    if args.json:
        C.dump_json(args.json, res)


if __name__ == "__main__":
    main()
