"""The foundation demo: forward-process statistics and analytic KLs on the embedded MNIST subset
(``python examples/oracle_tour.py [--batch-size B] [--seed S]``; ``hlvm demo`` is the main job, a different thing: see
:mod:`hlvm.cli.demo`).

For a batch of binarized MNIST images mapped to x ∈ {−1, 1}, it prints, for each schedule, the
prior KL(q(z_1|x) ‖ N(0, I)) and the diffusion loss of the *per-pixel Gaussian oracle* denoiser
at T = 10, 100, 1000 and T = ∞ (continuous time, midpoint quadrature), in nats per image and
bits/dim.  The oracle treats pixels as independent Gaussians with the batch's mean and variance,
so x̂ = E[x | z_t] is exact for that Gaussian and the printed numbers are reproducible.
"""

from __future__ import annotations

import math

import torch

from hlvm.data import load_dataset
from hlvm.diffusion.bound import diffusion_loss
from hlvm.diffusion.gaussian import diffusion_kl, prior_kl
from hlvm.diffusion.oracle import GaussianOracle
from hlvm.diffusion.schedules import CosineSchedule, LinearSchedule

__all__ = ["oracle_diffusion_loss", "run_demo", "main"]


def oracle_diffusion_loss(x, oracle, schedule, T, n_mc=8, generator=None, chunk=256):
    """L_T(x) per image through hlvm's own diffusion term (:func:`hlvm.diffusion.bound.diffusion_loss`):
    the mean over all T steps t = i/T (T finite), or over 4096 midpoints t = (k + ½)/4096 of [0, 1)
    (T = None, the midpoint rule for ½∫ γ'(t) E‖ε − ε̂‖² dt), each averaged over ``n_mc`` draws of ε."""
    nodes = 4096 if T is None else T
    t = (torch.arange(nodes, dtype=torch.float64) + (0.5 if T is None else 1.0)) / nodes
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(n_mc):
        for ti in t.split(chunk):
            xx = x.repeat(ti.numel(), 1)  # (n·B, D), time-major
            term, _ = diffusion_loss(oracle, schedule, T, xx, ti.repeat_interleave(x.shape[0]), generator=generator)
            total += term.view(ti.numel(), -1).sum(0)  # (n·B,) -> (B,)
    return total / (n_mc * nodes)


def run_demo(batch_size: int = 64, seed: int = 0) -> dict:
    data = load_dataset("mnist5k", "static")
    x = (2 * data.test[:batch_size] - 1).reshape(batch_size, -1).double()  # (B, 784) in {−1, 1}
    d = x.shape[1]
    train = data.train.reshape(len(data.train), -1).double() * 2 - 1  # (N, 784)
    mean, var = train.mean(0), train.var(0).clamp_min(1e-3)
    bpd = 1 / (d * math.log(2))
    oracle = GaussianOracle(mean, torch.diag(var))  # independent pixels: E[x | z_t] per pixel
    print(f"hlvm foundation demo: {batch_size} test images of {data.name} ({data.kind}, D = {d}), x ∈ {{−1, 1}}")
    print("per-pixel Gaussian oracle denoiser fitted on the 4,000 training images\n")
    out = {}
    for schedule in (LinearSchedule(-13.3, 5.0).double(), CosineSchedule(-13.3, 5.0).double()):
        name = type(schedule).__name__
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        print(f"{name}: γ(0), γ(½), γ(1) = {', '.join(f'{v:.3f}' for v in schedule(t).tolist())};  "
              f"α = {', '.join(f'{v:.4f}' for v in a.tolist())};  σ = {', '.join(f'{v:.4f}' for v in s.tolist())}")
        kl1 = prior_kl(x, schedule(torch.ones((), dtype=torch.float64))).mean().item()
        print(f"  prior KL(q(z_1|x) ‖ N(0,I))       {kl1:10.3f} nats/image  {kl1 * bpd:.5f} bits/dim")
        g = torch.Generator().manual_seed(seed)
        for T in (10, 100, 1000, None):
            L = oracle_diffusion_loss(x, oracle, schedule, T, n_mc=2, generator=g).mean().item()
            label = "∞" if T is None else str(T)
            print(f"  diffusion loss L_T, T = {label:>5}      {L:10.3f} nats/image  {L * bpd:.5f} bits/dim")
            out[(name, T)] = L
        # the analytic KL of one transition against its ε-form, as a consistency check
        g_s, g_t = schedule(torch.tensor(0.3, dtype=torch.float64)), schedule(torch.tensor(0.4, dtype=torch.float64))
        x_hat = torch.zeros_like(x)
        kl = diffusion_kl(x, x_hat, g_s, g_t).mean().item()
        print(f"  KL(q(z_s|z_t,x) ‖ p) at s=.3,t=.4 with x̂ = 0: {kl:.3f} nats/image\n")
    return out


def main(argv=None) -> None:
    """``python examples/oracle_tour.py``: :func:`run_demo` from the command line."""
    import argparse

    p = argparse.ArgumentParser(prog="python examples/oracle_tour.py", description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    run_demo(batch_size=args.batch_size, seed=args.seed)


if __name__ == "__main__":
    main()
