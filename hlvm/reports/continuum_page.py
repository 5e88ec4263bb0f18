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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
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
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
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
        rows = [(L, _at(pts, a, L), _at(pts, b, L)) for L in depths]
        text = ", ".join("L = {}: {:+.2f} ± {:.2f}".format(L, *diff(ea, eb, bound)) for L, ea, eb in rows
                         if ea is not None and eb is not None)
        if text:
            out.append(f"{'Tightest bound' if bound == 'tightest' else 'ELBO'} of {what} ({a} − {b}): {text} nats.")
    best = []
    for family in dict.fromkeys(e["family"] for e in pts):
        rows = [e for e in pts if e["family"] == family and e["L"] is not None]
        if rows:
            e = max(rows, key=lambda e: e["bound"])
            best.append(f"{family} {e['bound']:.2f} ± {e['se']:.2f} ({e['bound_type']}, L = {e['L']})")
    if best:
        out.append("Best tightest bound of each family over the depths: " + "; ".join(best) + ".")
    limit = _at(pts, "vdm", None)
    if limit is not None:
        rows = [(L, _at(pts, "vdm", L)) for L in depths]
        text = ", ".join("T = {}: {:+.2f} ± {:.2f}".format(L, *diff(e, limit, "elbo")) for L, e in rows if e is not None)
        if text:
            out.append(f"VDM ELBO at T = L minus the continuous-time ELBO ({limit['elbo']:.2f} ± "
                       f"{limit['elbo_se']:.2f}): {text} nats.")
    return out
