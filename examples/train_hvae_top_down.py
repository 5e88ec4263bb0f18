"""Train a top-down (ladder) hierarchical VAE on binarized MNIST with plain Pyro SVI.

Generative story:  z_L ∼ N(0, I),   z_l ∼ N(μθ_l(z_{l+1}), diag σθ_l(z_{l+1})²)  for l = L−1 … 1,
                   x ∼ Bernoulli(decoder(z_1)).
Inference: a deterministic bottom-up pass d_1 = f_1(x), d_l = f_l(d_{l−1}), then a stochastic
*top-down* posterior q(z_L | d_L) ∏_l q(z_l | z_{l+1}, d_l) that runs in the model's own order,
merging each bottom-up message with the generative transition (``--merge precision``: the ladder
VAE's precision-weighted merge; ``--merge residual``: NVAE's residual posterior).

Because guide and model share the latents' order, every z_l's model parents are already drawn when
the guide reaches z_l, and ``TraceMeanField_ELBO`` computes each layer's KL(q ‖ p) in closed form,
exactly.  A diffusion model is this hierarchy with a fixed posterior and one shared denoiser
(see ``train_vdm.py``).

References: Sønderby et al., *Ladder Variational Autoencoders*, NeurIPS 2016; Vahdat & Kautz,
*NVAE*, NeurIPS 2020; De Sousa Ribeiro & Glocker, *Demystifying Variational Diffusion Models*, 2024.

Run:  python examples/train_hvae_top_down.py --layers 3 --steps 2000 --samples hvae_td.png [--device cuda]
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adam

import hlvm
from hlvm.data import batches, load_dataset
from hlvm.reports.plots import save_grid
from hlvm.zoo import TopDownHVAE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (mini-batches)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"],
                   help="MNIST subset (4,000/1,000 images) or scikit-learn's 8×8 digits (fast)")
    p.add_argument("--layers", type=int, default=3, help="number L of stochastic layers")
    p.add_argument("--latent-dim", type=int, default=16, help="size of every z_l")
    p.add_argument("--merge", default="precision", choices=["precision", "residual"])
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--samples", metavar="PATH", help="save a PNG grid of 64 samples here")
    args = p.parse_args(argv)

    pyro.set_rng_seed(args.seed)
    device = torch.device(args.device)
    data = load_dataset(args.dataset).to(device)  # binarized images, (N, 1, H, W) in {0, 1}
    bits = 1 / (data.dim * math.log(2))  # nats/image -> bits/dim

    hvae = TopDownHVAE(data.shape, likelihood=data.kind, layers=args.layers, latent_dim=args.latent_dim,
                       merge=args.merge).to(device)
    svi = SVI(hvae.model, hvae.guide, Adam({"lr": args.lr}), TraceMeanField_ELBO())

    step = 0
    while step < args.steps:
        for x in batches(data, args.batch_size):  # one epoch of shuffled mini-batches
            loss = svi.step(x) / x.shape[0]  # svi.step returns −ELBO summed over the batch
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                print(f"step {step:5d}  train −ELBO {loss:8.2f} nats/image  {loss * bits:.4f} bits/dim")
            if step == args.steps:
                break

    # The test ELBO: the same estimator, averaged over the held-out images (no gradients).
    total = sum(svi.evaluate_loss(x) for x in batches(data, 500, split="test", shuffle=False))
    nats = total / data.test.shape[0]
    print(f"test −ELBO {nats:.2f} nats/image  {nats * bits:.4f} bits/dim")

    if args.samples:
        # ancestral samples: z_L ∼ N(0, I), down the transitions to z_1, then the decoder's pixel probabilities
        save_grid(hlvm.sample(hvae, 64), args.samples, kind=data.kind)
        print(f"wrote {args.samples}")


if __name__ == "__main__":
    main()
