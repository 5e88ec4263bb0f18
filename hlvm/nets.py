"""Backbones for the shared denoiser, all with the signature ``backbone(z_t, gamma_t) -> out``.

* :class:`GammaEmbedding` — sinusoidal embedding of the noise level γ followed by an MLP
  (Vaswani et al. 2017 positional encoding; VDM conditions on rescaled γ the same way).
* :class:`FourierFeatures` — sin/cos(2^n π z) input features that help resolve fine detail of
  discrete data at high SNR (VDM, Appendix C).
* :class:`MLPBackbone` — residual MLP for flat data (2-D toy sets, flattened images).
* :class:`UNet` — a small U-Net for 28×28 and 32×32 images (Ronneberger et al. 2015; the
  residual, GroupNorm, FiLM-conditioned form of Ho et al. 2020).
* :class:`QuadraticEnergy` — turns any same-shape backbone f into a scalar energy
  E(z) = ½ ‖z − f(z, γ)‖² / σ-free (Salimans & Ho 2021, *Should EBMs model the energy or the score?*).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GammaEmbedding", "FourierFeatures", "MLPBackbone", "UNet", "QuadraticEnergy"]


class GammaEmbedding(nn.Module):
    """Embed γ of shape (B,) into (B, dim): sinusoids of the rescaled level, then an MLP.

    γ is mapped affinely so that ``gamma_range`` covers [0, 1000] (as VDM does with t);
    levels outside the range extrapolate smoothly.
    """

    def __init__(self, dim: int = 128, gamma_range: tuple[float, float] = (-13.3, 5.0)):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        lo, hi = gamma_range
        if lo >= hi:
            raise ValueError(f"gamma_range must be increasing, got {gamma_range}")
        self.dim, self.lo, self.hi = dim, float(lo), float(hi)
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1)))
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        tau = 1000.0 * (gamma - self.lo) / (self.hi - self.lo)
        arg = tau.unsqueeze(-1) * self.freqs.to(tau.dtype)  # (B, dim/2)
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1))


class FourierFeatures(nn.Module):
    """Concatenate sin/cos(2^n π z) for n in [n_min, n_max] along ``dim`` (VDM, App. C)."""

    def __init__(self, n_min: int = 6, n_max: int = 8, dim: int = 1):
        super().__init__()
        if n_min > n_max:
            raise ValueError(f"n_min must be <= n_max, got {n_min} > {n_max}")
        self.dim = dim
        self.register_buffer("scales", (2.0 ** torch.arange(n_min, n_max + 1)) * math.pi)

    @property
    def multiplier(self) -> int:
        return 1 + 2 * self.scales.numel()

    def forward(self, z):
        shape = [1] * (z.dim() + 1)
        shape[self.dim + 1] = -1
        zz = z.unsqueeze(self.dim + 1) * self.scales.to(z.dtype).view(shape)  # (B, C, K, ...)
        zz = zz.flatten(self.dim, self.dim + 1)  # (B, C·K, ...) features of every channel
        return torch.cat([z, zz.sin(), zz.cos()], dim=self.dim)


class _ResMLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        scale, shift = self.film(emb).chunk(2, dim=-1)
        a = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(F.silu(a))))


class MLPBackbone(nn.Module):
    """Residual MLP f(z_t, γ_t) for data of any shape (flattened to (B, D) internally).

    Args:
        data_shape: the per-example shape, e.g. ``(2,)`` or ``(1, 28, 28)``.
        width, depth: hidden width and number of residual blocks.
        emb_dim: size of the γ embedding.
        fourier: ``(n_min, n_max)`` to append Fourier features of z, or None.
        out_dim: output size per example (defaults to D, i.e. same shape as z).
    """

    def __init__(self, data_shape, width: int = 256, depth: int = 3, emb_dim: int = 64,
                 fourier: tuple[int, int] | None = None, gamma_range=(-13.3, 5.0), out_dim: int | None = None):
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.fourier = FourierFeatures(*fourier) if fourier else None
        d_in = d * (self.fourier.multiplier if self.fourier else 1)
        self.embed = GammaEmbedding(emb_dim, gamma_range)
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(_ResMLPBlock(width, emb_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim or d)
        self.out_dim = out_dim

    def forward(self, z_t, gamma_t):
        b = z_t.shape[0]
        h = z_t.reshape(b, -1)  # (B, D)
        if self.fourier is not None:
            h = self.fourier(h)  # (B, D·(1+2K))
        emb = self.embed(gamma_t.expand(b) if gamma_t.dim() == 0 else gamma_t.reshape(b))
        h = self.inp(h)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(F.silu(self.out_norm(h)))
        return out if self.out_dim else out.reshape(z_t.shape)  # (B, D) -> (B, *data_shape)


class _ResConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h, emb):
        a = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, 2C, 1, 1) -> 2 × (B, C, 1, 1)
        a = self.norm2(a) * (1 + scale) + shift
        return self.skip(h) + self.conv2(F.silu(a))


class UNet(nn.Module):
    """A small U-Net f(z_t, γ_t) for (B, C, H, W) images with H, W divisible by 2^(levels−1).

    28×28 uses two downsamplings (28 → 14 → 7); 32×32 likewise (32 → 16 → 8).
    """

    def __init__(self, in_channels: int = 1, base: int = 32, mults=(1, 2, 2), emb_dim: int = 128,
                 gamma_range=(-13.3, 5.0), fourier: tuple[int, int] | None = None):
        super().__init__()
        self.levels = len(mults)
        self.fourier = FourierFeatures(*fourier) if fourier else None
        c_in = in_channels * (self.fourier.multiplier if self.fourier else 1)
        self.embed = GammaEmbedding(emb_dim, gamma_range)
        self.conv_in = nn.Conv2d(c_in, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = base
        skips = []
        for i, ch in enumerate(chans):
            self.down.append(_ResConvBlock(c, ch, emb_dim))
            c = ch
            skips.append(c)
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = _ResConvBlock(c, c, emb_dim)
        self.mid2 = _ResConvBlock(c, c, emb_dim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            self.up.append(_ResConvBlock(c + skips[i], ch, emb_dim))
            c = ch
            self.upsample.append(nn.Identity() if i == 0 else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)))
        self.norm_out = nn.GroupNorm(min(8, c), c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, z_t, gamma_t):
        if z_t.dim() != 4:
            raise ValueError(f"UNet expects (B, C, H, W) input, got shape {tuple(z_t.shape)}")
        factor = 2 ** (self.levels - 1)
        if z_t.shape[-1] % factor or z_t.shape[-2] % factor:
            raise ValueError(f"image size {tuple(z_t.shape[-2:])} must be divisible by {factor}")
        b = z_t.shape[0]
        emb = self.embed(gamma_t.expand(b) if gamma_t.dim() == 0 else gamma_t.reshape(b))
        h = self.conv_in(self.fourier(z_t) if self.fourier is not None else z_t)
        hs = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            hs.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for block, up in zip(self.up, self.upsample):
            h = block(torch.cat([h, hs.pop()], dim=1), emb)  # (B, C + C_skip, H, W)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class QuadraticEnergy(nn.Module):
    """E(z, γ) = ½ ‖z − f(z, γ)‖² per example, from any same-shape backbone f.

    Its score −∇_z E is what an ``"energy"`` :class:`~hlvm.diffusion.denoiser.Denoiser` converts to x̂.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, z_t, gamma_t):
        r = z_t - self.backbone(z_t, gamma_t)
        return 0.5 * r.pow(2).flatten(1).sum(-1)  # (B, ...) -> (B,)
