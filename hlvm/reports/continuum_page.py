"""The continuum's page and figure (``docs/continuum.{md,png}``) from ``continuum.json``
(:mod:`hlvm.reports.continuum`)."""

from __future__ import annotations

import math
import os

__all__ = ["write_page", "plot_continuum", "findings", "key"]


def key(family: str, L: int | None) -> str:
    """A point's name: ``hvae-L4``, ``vdm-Linf`` (the continuous-time VDM)."""
    return f"{family}-L{'inf' if L is None else L}"




def plot_continuum(result: dict, path: str, families: dict) -> str:
    """Two panels against depth L (log axis): each point's tightest bound, and its ELBO; SE bars.
    The continuous-time VDM is a horizontal line (ELBO; PF-ODE bound dashed on the left panel)."""
    from .plots import _plt

    plt = _plt()
    pts = result["points"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharey=False)
    for ax, key, se, title in ((axes[0], "bound", "se", "tightest bound (IWAE; VDM: ELBO)"),
                               (axes[1], "elbo", "elbo_se", "ELBO")):
        for family, (label, *_rest) in families.items():
            rows = sorted((e for e in pts if e["family"] == family and e["L"] is not None), key=lambda e: e["L"])
            if rows:
                ax.errorbar([e["L"] for e in rows], [e[key] for e in rows], yerr=[e[se] for e in rows],
                            marker="o", ms=4, capsize=3, label=label)
        limit = next((e for e in pts if e["family"] == "vdm" and e["L"] is None), None)
        if limit is not None:
            ax.axhline(limit["elbo"], color="k", lw=1, label=f"VDM, T = ∞: ELBO {limit['elbo']:.2f}")
            if key == "bound" and limit["bound_type"] == "pfode":
                ax.axhline(limit["bound"], color="k", lw=1, ls="--", label=f"VDM, T = ∞: PF-ODE {limit['bound']:.2f}")
        finite = sorted(e[key] for e in pts)
        if finite:
            top = finite[-1]
            ax.set_ylim(max(finite[0], top - 80) - 2, top + 5)  # off-scale points (T = 1, 2 VDM bounds) leave the panel
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth L (latent layers; VDM: T)")
        ax.set_ylabel("nats per image (higher is better)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)  # below: lines dive off-scale
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_page(result: dict, stem: str, families: dict) -> str:
    """``stem.md`` (table, findings, figure) and ``stem.png``; the page's path."""
    from .per_image import load_row_values

    png = plot_continuum(result, stem + ".png", families)
    values = load_row_values(stem, [key(e["family"], e["L"]) for e in result["points"]])
    s = result["settings"]
    budget = f"{s['epochs']} epochs" if s["epochs"] else f"{s['steps']} steps"
    lines = [
        "# The continuum: from a VAE to a diffusion model, one latent layer at a time",
        "",
        f"`hlvm continuum --profile {s['name']}` (resumable; never in CI). Every point: {s['data']}, {budget} at "
        f"batch {s['batch_size']}, width {s['hidden']}, its class's training recipe fitted to the budget (the "
        f"learned posteriors' KL warm-up over {s.get('kl_warmup_share', 0):.0%} of the steps; no warm-up and no free "
        f"bits for the fixed posteriors, which cannot collapse; each point's recipe is in the JSON); tightest bound = IWAE "
        f"(K = {s['K']}, {s['iwae_examples'] or 'all'} test images) for the families with a learned or fixed guide, "
        f"the PF-ODE bound ({s['pfode_examples'] or 'all'} images) for the continuous-time VDM, the ELBO "
        f"({s['elbo_examples'] or 'all'} images) for a discrete VDM. All are lower bounds on log p(x), nats per "
        f"image; ± is the standard error over images. The families are those of De Sousa Ribeiro & Glocker "
        f"(2024, Fig. 5):",
        "",
        *[f"* `{name}` — {label}" for name, (label, *_r) in families.items()],
        "",
        f"![continuum]({os.path.basename(png)})",
        "",
        "## What the figure shows",
        "",
        "Differences are paired (the same test images), Δ ± paired SE, in nats.",
        "",
        *[f"* {line}" for line in findings(result, values)],
        "",
        "## Points",
        "",
        "| family | L | tightest bound | ± | type | ELBO | ± | params | epochs | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in sorted(result["points"], key=lambda e: (list(families).index(e["family"]), e["L"] or 10 ** 9)):
        L = "∞" if e["L"] is None else e["L"]
        lines.append(f"| {e['family']} | {L} | {e['bound']:.2f} | {e['se']:.2f} | {e['bound_type']} | "
                     f"{e['elbo']:.2f} | {e['elbo_se']:.2f} | {e['params']:,} | {e['epochs']:.1f} | {e['seconds']:.0f} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return stem + ".md"


def _at(pts: list, family: str, L) -> dict | None:
    return next((e for e in pts if e["family"] == family and e["L"] == L), None)


def _trend(rows: list, a: str, b: str) -> str:
    """How a paired difference moves with depth, in words: who leads at the first and the last depth
    (a lead counts beyond two SEs) and between which depths the lead changes hands."""
    if len(rows) < 2:
        return ""

    def leader(d, se):
        return a if d > 2 * se else b if d < -2 * se else None

    first, last = leader(*rows[0][1:]), leader(*rows[-1][1:])
    swaps = [(L0, L1) for (L0, d0, s0), (L1, d1, s1) in zip(rows, rows[1:])
             if leader(d0, s0) and leader(d1, s1) and leader(d0, s0) != leader(d1, s1)]
    if first and first == last and not swaps:
        grows = abs(rows[-1][1]) > abs(rows[0][1])
        return f" — {first} leads at every depth measured, by {'more' if grows else 'less'} at L = {rows[-1][0]} than at L = {rows[0][0]}"
    if swaps:
        where = "; ".join(f"between L = {L0} and L = {L1}" for L0, L1 in swaps)
        return f" — the lead changes hands {where}: {last or 'neither'} leads at L = {rows[-1][0]}"
    return f" — {first or 'neither'} leads at L = {rows[0][0]}, {last or 'neither'} at L = {rows[-1][0]}"


def findings(result: dict, values: dict | None = None) -> list[str]:
    """The page's reading of the figure, in numbers: where the gap between learned and fixed
    posteriors opens or closes, what sharing the network costs, how the discrete VDM approaches
    continuous time.  Every point is scored on the same test images (a shared prefix), so each
    difference is paired — Δ ± its paired SE (:func:`hlvm.eval.paired_difference`) — where
    ``values`` ({point: {bound: per-image array}}) holds both points; else ± the unpaired
    √(se_a² + se_b²)."""
    from ..eval.paired import paired_difference

    pts, out, values = result["points"], [], values or {}
    depths = sorted({e["L"] for e in pts if e["L"] is not None})

    def diff(ea, eb, bound):
        """Δ ± SE of ``bound`` ("elbo", or each point's tightest) between points ea and eb: paired where
        both have per-image values of the same bound, else unpaired."""
        va, vb = values.get(key(ea["family"], ea["L"])), values.get(key(eb["family"], eb["L"]))
        col = ea["bound_type"] if bound == "tightest" else "elbo"
        if va and vb and (bound == "elbo" or col == eb["bound_type"]) and col in va and col in vb:
            n = min(len(va[col]), len(vb[col]))
            d = paired_difference(va[col][:n], vb[col][:n])
            return d["delta"], d["se"]
        v, se = ("bound", "se") if bound == "tightest" else ("elbo", "elbo_se")
        return ea[v] - eb[v], math.hypot(ea[se], eb[se])

    for a, b, what, bound in (
            ("hvae", "diffusion", "the learned posterior over the fixed diffusion posterior", "tightest"),
            ("hvae", "diffusion-denoiser", "the learned posterior over the fixed posterior with denoiser transitions",
             "tightest"),
            ("hvae", "hvae-shared", "a network per layer over one shared network", "tightest"),
            ("diffusion-denoiser", "diffusion", "denoiser over Gaussian transitions (fixed posterior)", "tightest"),
            ("diffusion-denoiser", "vdm", "family (d) over the VDM at T = L (a learned decoder; one step fewer)",
             "elbo")):
        rows = [(L, *diff(ea, eb, bound)) for L, ea, eb in ((L, _at(pts, a, L), _at(pts, b, L)) for L in depths)
                if ea is not None and eb is not None]
        text = ", ".join(f"L = {L}: {d:+.2f} ± {se:.2f}" for L, d, se in rows)
        if text:
            out.append(f"{'Tightest bound' if bound == 'tightest' else 'ELBO'} of {what} ({a} − {b}): {text} nats"
                       f"{_trend(rows, a, b)}.")
    out += _best_points(pts, values)
    limit = _at(pts, "vdm", None)
    if limit is not None:
        rows = [(L, _at(pts, "vdm", L)) for L in depths]
        text = ", ".join("T = {}: {:+.2f} ± {:.2f}".format(L, *diff(e, limit, "elbo")) for L, e in rows if e is not None)
        if text:
            out.append(f"VDM ELBO at T = L minus the continuous-time ELBO ({limit['elbo']:.2f} ± "
                       f"{limit['elbo_se']:.2f}): {text} nats.")
    return out


def _best_points(pts: list, values: dict) -> list[str]:
    """Each family's best point over the depths, and the continuous-time VDM's own tightest bound
    against each of them, paired image by image where both have per-image values."""
    from ..eval.paired import paired_difference

    out = []
    best = {}
    for family in dict.fromkeys(e["family"] for e in pts):
        rows = [e for e in pts if e["family"] == family and e["L"] is not None]
        if rows:
            best[family] = max(rows, key=lambda e: e["bound"])
    if best:
        out.append("Best tightest bound of each family over the depths: " + "; ".join(
            f"{f} {e['bound']:.2f} ± {e['se']:.2f} ({e['bound_type']}, L = {e['L']})" for f, e in best.items()) + ".")
    limit = _at(pts, "vdm", None)
    if limit is not None and best:  # the limit's own tightest bound against each family's best, image by image
        va = values.get(key("vdm", None), {}).get(limit["bound_type"])
        text = []
        for f, e in best.items():
            vb = values.get(key(f, e["L"]), {}).get(e["bound_type"])
            if va is not None and vb is not None:
                n = min(len(va), len(vb))
                d = paired_difference(va[:n], vb[:n])
                text.append(f"{f} (L = {e['L']}): {d['delta']:+.2f} ± {d['se']:.2f}")
        if text:
            out.append(f"The continuous-time VDM's {limit['bound_type']} bound ({limit['bound']:.2f} ± {limit['se']:.2f}) "
                       f"minus each family's best tightest bound, paired on the images both cover: "
                       + ", ".join(text) + " nats.")
    return out
