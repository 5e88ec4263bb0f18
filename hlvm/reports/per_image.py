"""Per-image bounds of the results page and the row-against-row table built from them.

Every row of ``make results`` is scored on the same test images, in the same order, so two rows
are compared by their paired difference (:func:`hlvm.eval.paired_difference`): the mean of the
per-image differences and its standard error, which removes the between-image spread that a
comparison of two means ± their own SEs keeps.  This module

* saves each row's per-image values — ELBO, and the IWAE or PF-ODE bound where the row has one —
  as float32 arrays in ``<stem>-per-image/<row>.npz`` (about 40 KB a bound for 10,000 images;
  written atomically, beside ``results.json``);
* builds the table ``results.json["paired"]``: for the ELBO, and for the *tightest* bound of each
  row (its IWAE bound, else its PF-ODE bound, else its ELBO — the bound a reader compares), every
  pair of rows on the images both were scored on (a shared prefix of the test set), as
  ``{a, b, bound, delta, se, share_a_gt_b, n}`` with A the row ahead.

A bound-against-bound entry of two different kinds (one row's IWAE bound against another's
PF-ODE bound) is a comparison of two lower bounds on log p(x) of two models: Δ > 0 says A's bound
is higher, not that A's likelihood is.
"""

from __future__ import annotations

import os

import numpy as np

from ..eval.paired import paired_table

__all__ = ["TIGHTEST", "save_row_values", "load_row_values", "paired_entries", "paired_lines"]

#: the bound a row is judged by, in order of preference (the first the row has)
TIGHTEST = ("iwae", "pfode", "elbo")


def _folder(stem: str) -> str:
    return f"{stem}-per-image"


def save_row_values(stem: str, row: str, values: dict) -> str:
    """Write ``{bound: per-image tensor}`` of ``row`` to ``<stem>-per-image/<row>.npz`` (float32,
    atomically); the path written."""
    os.makedirs(_folder(stem), exist_ok=True)
    path = os.path.join(_folder(stem), f"{row}.npz")
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez_compressed(tmp, **{k: v.detach().cpu().numpy().astype(np.float32) for k, v in values.items()})
    os.replace(tmp, path)
    return path


def load_row_values(stem: str, rows: list[str]) -> dict:
    """``{row: {bound: float64 array}}`` of the rows whose per-image file exists."""
    out = {}
    for row in rows:
        path = os.path.join(_folder(stem), f"{row}.npz")
        if os.path.isfile(path):
            with np.load(path) as f:
                out[row] = {k: f[k].astype(np.float64) for k in f.files}
    return out


def _tightest(values: dict) -> str:
    return next(b for b in TIGHTEST if b in values)


def _entry(a: str, va: np.ndarray, b: str, vb: np.ndarray, bound: str) -> dict:
    """One pair on the images both rows were scored on (a shared prefix), A the row ahead."""
    n = min(len(va), len(vb))
    (entry,) = paired_table({a: va[:n], b: vb[:n]}, bound)
    return entry


def paired_entries(values: dict) -> list[dict]:
    """Every pair of rows of ``values`` ({row: {bound: array}}), for the ELBO and for each row's
    tightest bound (named ``"iwae vs pfode"`` and so on when the two rows' kinds differ)."""
    rows = list(values)
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            out.append(_entry(a, values[a]["elbo"], b, values[b]["elbo"], "elbo"))
            ta, tb = _tightest(values[a]), _tightest(values[b])
            if (ta, tb) != ("elbo", "elbo"):
                e = _entry(a, values[a][ta], b, values[b][tb], "tightest")
                e["bounds"] = {a: ta, b: tb}
                out.append(e)
    return out


def paired_lines(entries: list[dict]) -> list[str]:
    """The page's section: one table line per pair, Δ ± paired SE and the share of images."""
    if not entries:
        return []
    lines = ["", "## Paired differences", "",
             "Row A against row B on the same test images: Δ = mean of the per-image differences of the bound "
             "(nats; A is the row ahead), its paired standard error, and the share of images on which A's bound is "
             "higher. A claim \"A beats B\" on this page rests on Δ being several SEs from 0 here. *Tightest*: each "
             "row's IWAE bound, else its PF-ODE bound, else its ELBO.", "",
             "| A | B | bound | Δ (nats) | paired SE | unpaired SE | A > B on | images |", "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        kind = e["bound"] if e["bound"] == "elbo" else f"{e['bounds'][e['a']]} vs {e['bounds'][e['b']]}"
        lines.append(f"| {e['a']} | {e['b']} | {kind} | {e['delta']:.2f} | {e['se']:.2f} | {e['se_unpaired']:.2f} | "
                     f"{100 * e['share_a_gt_b']:.0f}% | {e['n']:,} |")
    return lines
