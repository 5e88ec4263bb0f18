"""Paired differences of per-image bounds: how far row A is ahead of row B, and how sure that is.

Every row of a comparison is scored on the same test images, so the difference of two rows'
means is the mean of their per-image differences d_i = a_i − b_i, and its standard error is that
of the d_i (the paired-sample standard error; e.g. Wasserman, *All of Statistics*, §10.5):

    Δ = (1/n) Σ_i d_i,        SE(Δ) = sd(d; ddof = 1) / √n.

The image-to-image spread that both rows share (some digits are simply harder) cancels in d_i,
so SE(Δ) is far smaller than the unpaired √(SE_a² + SE_b²) when the rows are correlated — the
usual case for bounds of models trained on the same data. The share of images with a_i > b_i
says whether Δ is carried by most images or by a few.

The per-image values come from :func:`hlvm.evaluate` / :func:`hlvm.eval.score` with
``per_example=True`` (the ELBO, the IWAE bound of Burda, Grosse & Salakhutdinov 2016, eq. 8, the
PF-ODE bound), or from the ``.npz`` file ``hlvm evaluate`` writes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["paired_difference", "paired_table"]


def _vector(name: str, values) -> torch.Tensor:
    """``values`` as a finite 1-D float64 CPU tensor, or ValueError naming ``name``."""
    v = torch.as_tensor(values).detach().cpu().to(torch.float64)
    if v.dim() != 1:
        raise ValueError(f"{name} must be a vector of per-image values, got shape {tuple(v.shape)}")
    if v.numel() == 0:
        raise ValueError(f"{name} is empty: no images to compare")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} holds {int((~torch.isfinite(v)).sum())} non-finite value(s)")
    return v


def _se(v: torch.Tensor) -> float:
    """Standard error of the mean of ``v`` (ddof = 1); NaN for one value."""
    return float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")


def paired_difference(a, b, *, names: tuple[str, str] = ("a", "b")) -> dict:
    """The paired difference of two rows' per-image values on the same images, in the same order.

    :param a: per-image values of row A (a vector: tensor, array or list), e.g. its ELBO in nats.
    :param b: those of row B on the same images.
    :param names: how errors name the two rows.
    :returns: ``{"delta", "se", "n", "share_a_gt_b", "se_unpaired"}``: Δ = mean(a − b); its paired
        standard error sd(a − b; ddof = 1)/√n (NaN for n = 1); the number of images; the share
        of images with a_i > b_i (ties count for neither); and, for comparison, the unpaired
        √(SE(a)² + SE(b)²) that ignores the pairing.
    :raises ValueError: when either is not a finite non-empty vector or their lengths differ.
    """
    a, b = _vector(names[0], a), _vector(names[1], b)
    if a.numel() != b.numel():
        raise ValueError(f"{names[0]} and {names[1]} must hold the same images: "
                         f"{a.numel()} values against {b.numel()}")
    d = a - b
    return {"delta": float(d.mean()), "se": _se(d), "n": int(d.numel()),
            "share_a_gt_b": float((d > 0).double().mean()), "se_unpaired": math.hypot(_se(a), _se(b))}


def paired_table(rows: dict, bound: str, *, better_first: bool = True) -> list[dict]:
    """Row against row: the :func:`paired_difference` of every pair of ``rows`` for one bound.

    :param rows: {row name: per-image values of ``bound``}, all on the same images.
    :param bound: the name of the bound (``"elbo"``, ``"iwae"``, ``"pfode"``…), copied into each entry.
    :param better_first: orient each pair so that A is the row with the higher mean (Δ ≥ 0:
        "A beats B by Δ ± SE"); False: A is the row given first.
    :returns: one entry per pair, ``{"a", "b", "bound", "delta", "se", "share_a_gt_b", "n",
        "se_unpaired"}``, pairs in the order of ``rows``.
    :raises ValueError: fewer than two rows, or rows of different lengths (naming them).
    """
    if len(rows) < 2:
        raise ValueError(f"a paired table needs at least two rows, got {len(rows)}")
    vectors = {name: _vector(f"row {name!r}", v) for name, v in rows.items()}
    names = list(vectors)
    table = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = first, second
            if better_first and float(vectors[b].mean()) > float(vectors[a].mean()):
                a, b = b, a
            diff = paired_difference(vectors[a], vectors[b], names=(f"row {a!r}", f"row {b!r}"))
            table.append({"a": a, "b": b, "bound": bound, **diff})
    return table
