"""The results page (``docs/results.md``): the table of rows, what k̂ says of each IWAE figure, the
paired differences, the searches, the published anchors and the figures — written from
``results.json`` by :func:`write_page` (:mod:`hlvm.reports.results` runs the job).
"""

from __future__ import annotations

import json
import math
import os

from .per_image import paired_lines
from .search import search_lines
from .studies import study_lines

__all__ = ["ANCHORS", "SCHEDULE_JSON", "write_page", "khat_note"]

#: published test NLLs on binarized MNIST (nats): (model, NLL, bound type, protocol); bound types: ``ELBO``
#: (a variational bound), ``importance-weighted`` (IWAE-type bound with K samples, tighter than the ELBO)
#: or ``exact`` (an autoregressive model's exact likelihood).  DESIGN.md, "Published anchors".
ANCHORS = [
    ("VAE, 1 stochastic layer (Burda et al. 2016)", 86.76, "importance-weighted", "dynamic binarization, K = 5,000"),
    ("VAE, 2 stochastic layers (Burda et al. 2016)", 85.33, "importance-weighted", "dynamic binarization, K = 5,000"),
    ("IWAE, k = 50, 2 stochastic layers (Burda et al. 2016)", 82.90, "importance-weighted",
     "dynamic binarization, K = 5,000"),
    ("LVAE (Sønderby et al. 2016)", 81.74, "importance-weighted", "dynamic binarization, K = 5,000"),
    ("BIVA (Maaløe et al. 2019)", 78.41, "importance-weighted", "dynamic binarization"),
    ("NVAE (Vahdat & Kautz 2020)", 78.01, "importance-weighted", "dynamic binarization, K = 1,000"),
    ("Efficient-VDVAE (Hazami et al. 2022)", 79.09, "ELBO", "dynamic binarization"),
    ("BFN (Graves et al. 2023)", 77.87, "ELBO", "dynamic binarization; 79.46 at 100 sampling steps"),
    ("PixelCNN (van den Oord et al. 2016)", 81.30, "exact", "static binarization"),
]


def _fmt(v, spec="{:.2f}"):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def write_page(results: dict, profile: str, path: str, order=()) -> None:
    """The results page: the table of rows, what k̂ says of each IWAE figure, the searches, the
    published anchors, the figures."""
    order = {name: k for k, name in enumerate(order)}  # the rows' order (results.ROWS); others after, as given
    rows = sorted((r for r in results["rows"] if r.get("profile") == profile), key=lambda r: order.get(r["row"], len(order)))
    searches = {r["row"]: r["search"] for r in rows if r.get("search") and r["search"]["row"] == r["row"]}
    lines = [f"# Results on {rows[0]['dataset'] if rows else 'MNIST'} ({profile} profile)", "",
             "Produced by `make results` (`hlvm.reports.results`); every number is a lower bound on log p(x) of its row's model, "
             "nats per image (NLL ≤ −bound), from the run named in its row. Protocol: 60,000 training images dynamically "
             "binarized, the 10,000 test images binarized once (seed `MNIST_TEST_SEED`); train s: the training steps' seconds summed over every "
             "segment of a resumed run"
             + ("; settings chosen on held-out training images (below), never on the test set." if searches else "."), "",
             "| row | test ELBO | bits/dim | IWAE (K, images) | PF-ODE bound (images) | k̂ max | k̂ > 0.7 | active units | "
             "epochs | train s | eval s | threads | device | commit |",
             "|" + "---|" * 14]
    lines += [_table_line(r) for r in rows]
    lines += _reading_lines() + _khat_lines(rows)
    lines += paired_lines(results.get("paired", []))
    lines += search_lines(searches)
    lines += study_lines(rows)
    lines += _anchor_lines()
    lines += [""] + [f"![{r['row']}]({fig})" for r in rows for fig in r.get("figures", [])]
    lines += _schedule_section(os.path.join(os.path.dirname(path) or ".", SCHEDULE_JSON))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _table_line(r: dict) -> str:
    iw = f"{_fmt(r['iwae_nats'])} ± {_fmt(r['iwae_se'])} ({r['iwae_k']}, {r['n_test_iwae']})" if r["iwae_nats"] is not None else "–"
    pf = f"{_fmt(r['pfode_bound_nats'])} ± {_fmt(r['pfode_se'])} ({r['n_test_pfode']})" if r["pfode_bound_nats"] is not None else "–"
    share = r.get("khat_frac_gt_0.7")
    return (f"| {r['row']} | {_fmt(r['test_elbo_nats'])} ± {_fmt(r['test_elbo_se'])} | {_fmt(r['bits_per_dim'], '{:.4f}')} "
            f"| {iw} | {pf} | {_fmt(r['khat_max'])} | {'–' if share is None else f'{100 * share:.0f}%'} | "
            f"{r['active_units']} | {r['epochs']:.1f} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | "
            f"{r['threads']} | {r['device']} | "
            f"{r['git_commit']} |")


def _reading_lines() -> list[str]:
    return ["", "## Reading the table", "",
            "* Each row's bounds belong to that row's model: the continuous-time VDM has no importance-weighted bound "
            "(a discretized chain would be another model) and reports the probability-flow ODE bound instead "
            "(Hutchinson divergence, one draw of z_0 per image); the T = 1000 VDM's IWAE runs its own 1,000-step chain "
            "per importance sample, so it uses a small K on few images (stated in the cell) and carries the largest "
            "standard error.",
            "* Active units count the dimensions of Normal guide latents (Burda et al. 2016); a diffusion chain "
            "evaluated analytically has no guide sites, hence 0 for the VDM rows.",
            "* IWAE cells give K and the number of test images; ELBO cells are over the whole test set. ± is the "
            "standard error over test images.",
            "* The budget (epochs, threads, device) is in each row and is a small fraction of the published models' "
            "(hundreds to thousands of epochs on GPUs, deeper networks): the anchors below are context, not a "
            "like-for-like comparison. A row's ordering against another row at the same epochs is the comparison "
            "this page supports."]


def khat_note(r: dict) -> str | None:
    """One sentence on what the share of test images with Pareto k̂ > 0.7 says of row ``r``'s IWAE
    figure (Vehtari et al. 2024; the section's opening says why), or None for a row without one."""
    share = r.get("khat_frac_gt_0.7")
    if r.get("iwae_nats") is None or share is None:
        return None
    n, K, head = r["n_test_iwae"], r["iwae_k"], f"{r['row']}: k̂ > 0.7 on {100 * share:.0f}% of {r['n_test_iwae']:,} images"
    if share == 0:
        return (f"{r['row']}: k̂ ≤ 0.7 on all {n:,} images: the K = {K:,} estimate is reliable on each, so the IWAE "
                f"figure {r['iwae_nats']:.2f} is close to the bound it estimates.")
    if share < 0.1:
        return (f"{head}: the IWAE figure {r['iwae_nats']:.2f} rests mostly on reliable estimates; the few other "
                "images pull it a little further below log p(x), on average.")
    return (f"{head}: the IWAE figure {r['iwae_nats']:.2f} is a conservative bound (its NLL {-r['iwae_nats']:.2f} "
            f"likely overstates the model's) and more K would likely raise it; its ± does not cover this gap.")


def _khat_lines(rows: list[dict]) -> list[str]:
    notes = [khat_note(r) for r in rows]
    notes = [n for n in notes if n]
    if not notes:
        return []
    return ["", "## What k̂ says of each IWAE figure", "",
            "Pareto k̂ (PSIS, Vehtari et al. 2024) of each test image's K importance weights: above 0.7 their tail is "
            "too heavy for K samples to estimate p(x) reliably. Such an image's IWAE value is still a lower bound on "
            "log p(x) in expectation (Burda et al. 2016), but a loose and noisy one: typically well below log p(x) "
            "(the rare large weights that carry p(x) are missed) and now and then above it (when one is drawn). The "
            "± of an IWAE cell is the spread over images; it does not measure this gap.", ""] + [f"* {n}" for n in notes]


def _anchor_lines() -> list[str]:
    return ["", "## Published anchors (test NLL, nats; their budgets are far larger than this profile's)", "",
            "| model | NLL | bound | protocol |", "|---|---|---|---|"] + [
        f"| {name} | {nll:.2f} | {bound} | {proto} |" for name, nll, bound, proto in ANCHORS]


#: written by ``benchmarks/schedule_variance.py --json docs/schedule_variance.json``; shown on the page
SCHEDULE_JSON = "schedule_variance.json"


def _schedule_section(path: str) -> list[str]:
    """The schedule-variance benchmark's two tables, from the JSON that benchmark wrote (none if absent)."""
    if not os.path.exists(path):
        return []
    res = json.load(open(path))
    info = res["info"]
    head = ["| row | schedule | schedule objective | per-batch variance, i.i.d. t | per-batch variance, antithetic t | "
            "test ELBO (nats) |", "|" + "---|" * 6]

    def table(rows):
        return head + [f"| {k} | {r['schedule']} | {r['objective']} | {r['var_uniform']:.2f} | {r['var_antithetic']:.2f} | "
                       f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} |" for k, r in rows.items()]

    return ["", "## VDM's variance-minimising schedule (Kingma et al. 2021, §5, App. I.1)", "",
            f"From `python benchmarks/schedule_variance.py --json docs/{SCHEDULE_JSON}` (mnist5k, hlvm "
            f"{info.get('library', '?')}, {info.get('threads', '?')} threads, {res['steps']} steps; "
            f"variance of the batch-mean continuous diffusion loss over {res['draws']} draws of (t, ε) on {res['batch']} "
            f"test images; ELBO exact on {res['eval_examples']} test images; all schedules span γ ∈ [−13.3, 5]). "
            "Analysis: `docs/benchmarks.md`.", "",
            f"**One denoiser (the cosine VDM's), each schedule** — the ELBO is the same number by construction, the "
            f"learned density's interior trained {res['tune_steps']} steps on E[term²]:", "", *table(res["frozen"]), "",
            "**Trained jointly from scratch, the same data order:**", "", *table(res["joint"])]
