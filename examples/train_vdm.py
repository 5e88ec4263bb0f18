"""Train a variational diffusion model on binarized MNIST with plain Pyro SVI.

Generative story (T steps on the grid t(i) = i/T, or continuous time T → ∞):
    z_1 ∼ N(0, I),   z_s ∼ p(z_s | z_t) = q(z_s | z_t, x = x̂θ(z_t; t)),   x ∼ p(x | z_0),
with ONE denoiser x̂θ shared by every step and VDM's decoder p(x | z_0) built from the forward
process itself.  Inference: the fixed Gaussian noising q(z_1 | x) ∏ q(z_s | z_t, x), where
γ(t) = −log SNR(t) is a noise schedule (linear by default, learnable with ``--schedule learned-linear``).

This is a top-down hierarchical VAE (compare ``train_hvae_top_down.py``) whose latents have the
data's dimension.  ``hlvm.programs.elbo.DiffusionELBO`` is Pyro's ``Trace_ELBO`` with the chain collapsed
analytically:  −ELBO = −E log p(x | z_0) + KL(q(z_1 | x) ‖ N(0, I)) + L_T, where the diffusion loss
L_T (or L_∞) is estimated from one random timestep per image, so a step costs the same for any T.
The default MLP denoiser is CPU-friendly but learns slowly on images; ``--backbone unet`` (a small
U-Net) learns far faster per step and wants a GPU.

References: Kingma, Salimans, Poole & Ho, *Variational Diffusion Models*, NeurIPS 2021 (eqs. 11–17);
Ho, Jain & Abbeel, *DDPM*, NeurIPS 2020; De Sousa Ribeiro & Glocker, *Demystifying Variational
Diffusion Models*, 2024.

Run:  python examples/train_vdm.py --steps 2000 --samples vdm.png --sample-steps 200 [--T 1000]
      python examples/train_vdm.py --backbone unet --device cuda --steps 20000 --samples vdm_unet.png
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from hlvm.data import batches, load_dataset
from hlvm.programs.elbo import DiffusionELBO
from hlvm.reports.plots import save_grid
from hlvm.zoo import VDM


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (mini-batches)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"],
                   help="MNIST subset (4,000/1,000 images) or scikit-learn's 8×8 digits (fast)")
    p.add_argument("--T", type=int, default=None, help="discrete steps; omit for continuous time")
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine", "learned-linear"])
    p.add_argument("--backbone", default="mlp", choices=["mlp", "unet"], help="the denoiser's network")
    p.add_argument("--width", type=int, default=512, help="width of the residual MLP backbone")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--samples", metavar="PATH", help="save a PNG grid of 64 samples here")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="ancestral sampling steps (default: T, or 1000 in continuous time); fewer is faster")
    args = p.parse_args(argv)

    pyro.set_rng_seed(args.seed)
    device = torch.device(args.device)
    data = load_dataset(args.dataset).to(device)  # binarized images, (N, 1, H, W) in {0, 1}
    bits = 1 / (data.dim * math.log(2))  # nats/image -> bits/dim

    vdm = VDM(data.shape, likelihood=data.kind, T=args.T, schedule=args.schedule, backbone=args.backbone,
              width=args.width).to(device)
    svi = SVI(vdm.model, vdm.guide, Adam({"lr": args.lr}), DiffusionELBO())

    step = 0
    while step < args.steps:
        for x in batches(data, args.batch_size):  # one epoch of shuffled mini-batches
            loss = svi.step(x) / x.shape[0]  # svi.step returns −ELBO summed over the batch
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                print(f"step {step:5d}  train −ELBO {loss:8.2f} nats/image  {loss * bits:.4f} bits/dim")
            if step == args.steps:
                break

    # The test ELBO: the same unbiased estimator (one random t per image), averaged over the
    # held-out images.  DiffusionELBO(exact=True) would sum all T terms (or 1000 nodes) instead.
    total = sum(svi.evaluate_loss(x) for x in batches(data, 500, split="test", shuffle=False))
    nats = total / data.test.shape[0]
    print(f"test −ELBO {nats:.2f} nats/image  {nats * bits:.4f} bits/dim")

    if args.samples:
        # ancestral sampling z_1 ∼ N(0, I) → … → z_0 → x on a grid of --sample-steps steps: a
        # continuous-time model admits any grid, a discrete one a coarser grid of its schedule
        save_grid(vdm.sample(64, steps=args.sample_steps), args.samples, kind=data.kind)
        print(f"wrote {args.samples} ({args.sample_steps or vdm.T or 1000} sampling steps)")


if __name__ == "__main__":
    main()
