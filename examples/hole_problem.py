"""The "hole problem" of VAEs, and why a diffusion model does not have it (after Figure 4 of
De Sousa Ribeiro & Glocker, *Demystifying Variational Diffusion Models*, 2024).

Data: the 2-D five-cluster toy set (five Gaussian blobs on the unit circle).

* VAE with a 2-D latent:  z ∼ N(0, I),  x ∼ N(decoder(z), s² I);  q(z | x) = N(μφ(x), diag σφ(x)²).
  Its *aggregate posterior* q(z) = E_x q(z | x) is whatever the encoder learns.  The ELBO only asks
  each q(z | x) to be close to the prior on average, so q(z) typically splits into one island per
  cluster and leaves regions of high prior density with almost no posterior mass: "holes".
  Ancestral samples z ∼ N(0, I) that land in a hole decode to points between the clusters.
* VDM:  z_1 ∼ N(0, I),  z_s ∼ q(z_s | z_t, x = x̂θ(z_t; t)),  x ∼ p(x | z_0);  the posterior is the
  *fixed* noising q(z_1 | x) = N(α_1 x, σ_1² I) with α_1 ≈ 0, σ_1 ≈ 1, so the aggregate posterior
  q(z_1) = E_x q(z_1 | x) matches N(0, I) by construction, whatever the denoiser has learned.

The hole is quantified from samples on a grid of cells over [−4, 4]²: the fraction of the prior's
mass lying in cells where the aggregate posterior has under a tenth of the prior's mass ("hole
mass"), and a histogram estimate of KL(p(z) ‖ q(z)), which is large when p has mass where q has none.

References: De Sousa Ribeiro & Glocker 2024, Fig. 4; Hoffman & Johnson, *ELBO surgery*,
NeurIPS AABI workshop 2016; Rezende & Viola, *Taming VAEs*, 2018; Kingma et al., *Variational
Diffusion Models*, NeurIPS 2021.

Run:  python examples/hole_problem.py --out hole_problem.png        (about 20 s on two CPU cores)
"""

from __future__ import annotations

import argparse

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

import hlvm
from hlvm.data import batches, load_dataset
from hlvm.programs.elbo import DiffusionELBO
from hlvm.programs.likelihoods import GaussianLikelihood
from hlvm.zoo import VAE, VDM


def train(model, elbo, data, steps, lr, batch_size=512):
    svi = SVI(model.model, model.guide, Adam({"lr": lr}), elbo)
    step = 0
    while step < steps:
        for x in batches(data, batch_size):
            loss = svi.step(x) / x.shape[0]
            step += 1
            if step == steps:
                break
    return loss


def hole_numbers(z, lim=4.0, bins=16, threshold=0.1):
    """(hole mass, KL(p ‖ q)) of samples z (N, 2) of an aggregate posterior q against p = N(0, I)."""
    edges = torch.linspace(-lim, lim, bins + 1, dtype=torch.float64)
    cdf = torch.distributions.Normal(0.0, 1.0).cdf(edges)
    p = torch.outer(cdf.diff(), cdf.diff())  # prior mass of each cell (bins, bins)
    p = p / p.sum()
    q = torch.histogramdd(z.double().cpu(), bins=[edges, edges]).hist
    q = (q + 0.5) / (q + 0.5).sum()  # aggregate-posterior mass per cell (a half count against log 0)
    hole = p[q < threshold * p].sum().item()
    kl = (p * (p / q).log()).sum().item()
    return hole, kl


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="SVI steps for each model (mini-batches of 512)")
    p.add_argument("--scale", type=float, default=0.05, help="the VAE's observation noise s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="hole_problem.png")
    args = p.parse_args(argv)

    pyro.set_rng_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny networks: extra threads only add overhead (a lot, on a busy machine)
    data = load_dataset("five-clusters").to(device)  # 4,000 training points (N, 2)
    x = data.train

    vae = VAE(data_shape=(2,), likelihood=GaussianLikelihood((2,), scale=args.scale), latent_dim=2, hidden=64).to(device)
    loss = train(vae, TraceMeanField_ELBO(), data, args.steps, lr=3e-3)
    print(f"VAE  trained {args.steps} steps, −ELBO {loss:.3f} nats/point")

    vdm = VDM(data_shape=(2,), likelihood="continuous", T=None, backbone="mlp", width=64, depth=2).to(device)
    loss = train(vdm, DiffusionELBO(), data, args.steps, lr=3e-3)
    print(f"VDM  trained {args.steps} steps, −ELBO {loss:.3f} nats/point")

    with torch.no_grad():
        # Aggregate posteriors: run each guide on every training point (5 draws each) and keep its
        # top latent: z for the VAE, z_1 (the site at t = 1 of the guide's chain) for the VDM.
        xs = x.repeat(5, 1)
        z_vae = vae.guide(xs)
        top = f"z_{vdm.chain.steps}"
        z_vdm = poutine.trace(vdm.guide).get_trace(xs).nodes[top]["value"]
        x_vae = hlvm.sample(vae, 2000)
        x_vdm = vdm.sample(2000, steps=200)

    holes = {"VAE": hole_numbers(z_vae), "VDM": hole_numbers(z_vdm)}
    for name, (hole, kl) in holes.items():
        print(f"{name}  hole mass {hole:.4f}  KL(p‖q) {kl:.4f} nats")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.linspace(-4, 4, 200)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    density = torch.exp(-0.5 * (gx**2 + gy**2)) / (2 * torch.pi)
    panels = [("(a) data x", "data", x), ("(b) VAE: q(z) = E_x q(z|x) vs N(0, I)", "VAE", z_vae),
              ("(c) VAE samples", "samples", x_vae), ("(d) VDM: q(z_1) = E_x q(z_1|x) vs N(0, I)", "VDM", z_vdm),
              ("(e) VDM samples", "samples", x_vdm)]
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.3))
    for ax, (title, kind, pts) in zip(axes, panels):
        pts = pts.cpu()
        if kind in holes:  # a latent space: the aggregate posterior's samples under the prior's contours
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.25, color="tab:red")
            ax.contour(gx, gy, density, levels=6, colors="k", linewidths=0.7, zorder=3)
            hole, kl = holes[kind]
            ax.text(0.03, 0.03, f"hole mass {hole:.2f}\nKL(p‖q) {kl:.2f}", transform=ax.transAxes, fontsize=9)
            ax.set(xlim=(-4, 4), ylim=(-4, 4))
        else:  # data space: the training data in grey, model samples in blue on top
            ax.scatter(x[:, 0].cpu(), x[:, 1].cpu(), s=1, alpha=0.2, color="0.6")
            if kind == "samples":
                ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="tab:blue")
            ax.set(xlim=(-2, 2), ylim=(-2, 2))
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
