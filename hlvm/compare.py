"""``hlvm compare``: train several models under one budget and report their bounds in the same units.

Every model bounds the same discrete log-likelihood of the same test split, so the table's ELBO,
IWAE bound and bits/dim are directly comparable (De Sousa Ribeiro & Glocker 2024, §2; VDM §5).
The report folder holds ``report.md``, ``report.json``, PNG plots (test-ELBO curves, per-layer KL
or diffusion-term breakdown, sample grids, reconstructions) and the plate diagrams.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import replace

import torch

from .data import load_dataset
from .eval.evaluate import ParetoKWarning, evaluate
from .train import TrainConfig, Trainer
from .programs.chain import chains_of
from .programs.sample import draw

__all__ = ["run_compare", "format_table"]

COLUMNS = [("model", "{}"), ("elbo", "{:.2f}"), ("bpd", "{:.4f}"), ("iwae", "{:.2f}"), ("iwae_bpd", "{:.4f}"),
           ("khat_max", "{:.2f}"), ("params", "{:,}"), ("sec_per_epoch", "{:.2f}")]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the comparison rows."""
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c, fmt in COLUMNS:
            v = r.get(c)
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_compare(models: list[str], base: TrainConfig, out: str, K: int = 50, iwae_examples: int = 100,
                iwae_steps: int = 32, eval_examples: int = 1000, render: bool = True, log=print) -> dict:
    """Train each model with the same budget and data, evaluate, and write the report to ``out``."""
    if not models:
        raise ValueError("--models is empty")
    if K < 0 or iwae_examples < 0:
        raise ValueError("--K and --iwae-examples must be >= 0")
    data = load_dataset(base.data, base.binarize, base.data_dir)
    os.makedirs(out, exist_ok=True)
    rows, curves, breakdowns, details = [], {}, {}, {}
    from .plots import plot_bars, plot_curves, save_grid

    for name in models:
        tag = os.path.basename(name).replace(":", "-").replace(".py", "")
        cfg = replace(base, model=name, out=os.path.join(out, "runs", tag), eval_examples=min(eval_examples, 500))
        log(f"== {name}: training on {data.name} ({data.kind}, {tuple(data.shape)}) for {cfg.steps or cfg.epochs} "
            f"{'steps' if cfg.steps else 'epochs'}")
        trainer = Trainer(cfg, data)
        result = trainer.fit()
        model = trainer.model
        continuous = any(c.T is None for c in chains_of(model))
        trainer.swap_ema()  # evaluate the EMA weights when EMA is on
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ParetoKWarning)
            ev = evaluate(model, data.test[:eval_examples].to(trainer.device, trainer.dtype), elbo=trainer.estimator,
                          K=0, seed=base.seed)
            iw = (evaluate(model, data.test[:iwae_examples].to(trainer.device, trainer.dtype), elbo=trainer.estimator,
                           K=K, seed=base.seed, steps=iwae_steps if continuous else None)
                  if K and iwae_examples else {})
        for w in caught:
            if issubclass(w.category, ParetoKWarning):
                log(f"   warning ({name}): {w.message}")
        n_params = sum(p.numel() for p in model.parameters())
        row = {"model": name, "elbo": ev["elbo"], "bpd": ev["bpd"], "iwae": iw.get("iwae"), "iwae_bpd": iw.get("iwae_bpd"),
               "khat_max": iw.get("khat_max"), "khat_mean": iw.get("khat_mean"), "params": n_params,
               "sec_per_epoch": result["seconds_per_epoch"], "steps": result["steps"], "estimator": type(trainer.estimator).__name__,
               "iwae_note": f"{iwae_steps}-step discretization of the diffusion chain" if continuous else None}
        rows.append(row)
        details[name] = {"evaluation": ev, "iwae": iw, "history": result["history"]}
        curves[name] = ([h["step"] for h in trainer.history], [h["test_elbo"] for h in trainer.history])
        if "kl" in ev:
            breakdowns[name] = {**{f"KL {k}": v for k, v in ev["kl"].items()}, "recon": ev["reconstruction"]}
        elif "diffusion" in ev:
            breakdowns[name] = {"recon": ev["reconstruction"], "prior": ev["prior"], "diffusion": ev["diffusion"]}
        # figures of this model
        if len(data.shape) == 3:
            with torch.no_grad():
                torch.manual_seed(base.seed)
                samples = draw(model, 64)
                save_grid(samples.reshape(64, *data.shape).cpu(), os.path.join(out, f"samples_{tag}.png"), data.kind)
                x = data.test[:32].to(trainer.device, trainer.dtype)
                rec = model.reconstruct(x) if callable(getattr(model, "reconstruct", None)) else None
                if rec is not None:
                    pair = torch.cat([x.cpu(), rec.reshape(x.shape).cpu()])  # originals, then reconstructions
                    save_grid(pair, os.path.join(out, f"reconstructions_{tag}.png"), data.kind, nrow=16)
        if render:
            try:
                from .graph import render_module

                render_module(model, os.path.join(out, f"diagram_{tag}.png"))
            except Exception as e:  # rendering is optional in a report (e.g. no Graphviz)
                log(f"   (no plate diagram for {name}: {str(e).splitlines()[0]})")
        log(f"   ELBO {ev['elbo']:.2f} nats ({ev['bpd']:.4f} bits/dim)"
            + (f", IWAE(K={K}) {iw['iwae']:.2f} nats, k̂max {iw.get('khat_max', float('nan')):.2f}" if iw else ""))

    plot_curves(curves, os.path.join(out, "elbo_curves.png"))
    if breakdowns:
        plot_bars(breakdowns, os.path.join(out, "breakdown.png"), ylabel="nats per image")
    table = format_table(rows)
    notes = [r for r in rows if r.get("iwae_note")]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(f"# hlvm compare on {data.name}\n\n")
        f.write(f"Same budget per model ({base.steps or base.epochs} {'steps' if base.steps else 'epochs'}, batch {base.batch_size}, "
                f"lr {base.lr}, seed {base.seed}); test ELBO on {min(eval_examples, data.test.shape[0])} test images, "
                f"IWAE with K = {K} on {iwae_examples}. Nats per image (higher is better) and bits/dim (lower is better).\n\n")
        f.write(table + "\n\n")
        for r in notes:
            f.write(f"* {r['model']}: the IWAE bound uses a {r['iwae_note']} (the ELBO column is the continuous-time bound).\n")
        f.write("\n![test ELBO](elbo_curves.png)\n\n![breakdown](breakdown.png)\n")
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"data": data.name, "rows": rows, "details": details, "config": base.__dict__}, f, indent=1, default=str)
    log("\n" + table)
    log(f"\nreport written to {out}/report.md")
    return {"rows": rows, "details": details}
