"""Figures for reports: training curves, per-layer KL bars, image grids (matplotlib, Agg)."""

from __future__ import annotations

import math

import torch

__all__ = ["save_grid", "save_samples", "plot_curves", "plot_bars"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images: torch.Tensor, path: str, kind: str = "binary", nrow: int | None = None) -> str:
    """Save a (N, C, H, W) batch as one PNG grid; 8-bit data are rescaled from 0..255."""
    from torchvision.utils import save_image

    x = images.detach().float().cpu()
    if x.dim() == 2:  # flat data: not an image
        raise ValueError("save_grid needs image-shaped data (N, C, H, W)")
    if kind == "8bit":
        x = x / 255.0
    nrow = nrow or int(math.ceil(math.sqrt(x.shape[0])))
    save_image(x.clamp(0, 1), path, nrow=nrow, padding=1, pad_value=0.5)
    return path


def save_samples(model, path: str, shape, kind: str = "binary", seed: int = 0, n: int = 64) -> str:
    """A grid of ``n`` samples of ``model`` (:func:`hlvm.programs.sample.draw`) drawn from ``seed``,
    each reshaped to the data's ``shape`` (C, H, W)."""
    from ..programs.sample import draw

    with torch.no_grad():
        torch.manual_seed(seed)
        samples = draw(model, n)
    return save_grid(samples.reshape(n, *shape).cpu(), path, kind)


def plot_curves(curves: dict, path: str, ylabel: str = "test ELBO (nats)", xlabel: str = "step") -> str:
    """One line per model: curves = {name: (xs, ys)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bars(groups: dict, path: str, ylabel: str = "KL (nats)") -> str:
    """Grouped bars: groups = {model: {term: value}}."""
    plt = _plt()
    names = list(groups)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        terms = groups[name]
        ax.bar(range(len(terms)), list(terms.values()), color="tab:blue")
        ax.set_xticks(range(len(terms)), list(terms), rotation=45, ha="right", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
