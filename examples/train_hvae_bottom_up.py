"""Train a bottom-up hierarchical VAE on binarized MNIST with plain Pyro SVI.

Generative story (L stochastic layers, a Markov chain from the top):
    z_L ∼ N(0, I),   z_{l−1} ∼ N(μθ_l(z_l), diag σθ_l(z_l)²)  for l = L … 2,   x ∼ Bernoulli(decoder(z_1)).
Inference, bottom-up:  q(z_1 | x) ∏_{l≥2} q(z_l | z_{l−1}).

The guide visits the latents in the *opposite* order of the model: the model's parent of z_l
(z_{l+1}) is a descendant of z_l in the guide, so no per-site KL is available in closed form and
``TraceMeanField_ELBO`` would be wrong here.  ``Trace_ELBO`` (the plain Monte Carlo estimate of
E_q[log p(x, z) − log q(z | x)]) is the estimator to use.  Compare ``train_hvae_top_down.py``.

References: Rezende, Mohamed & Wierstra 2014; Burda, Grosse & Salakhutdinov, *Importance Weighted
Autoencoders*, ICLR 2016 (two-layer bottom-up models); De Sousa Ribeiro & Glocker, *Demystifying
Variational Diffusion Models*, 2024, Fig. 2 (left).

Run:  python examples/train_hvae_bottom_up.py --layers 2 --steps 2000 --samples hvae_bu.png [--device cuda]
"""

from __future__ import annotations

import argparse
import math

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import hlvm
from hlvm.data import batches, load_dataset
from hlvm.reports.plots import save_grid
from hlvm.zoo import BottomUpHVAE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (mini-batches)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"],
                   help="MNIST subset (4,000/1,000 images) or scikit-learn's 8×8 digits (fast)")
    p.add_argument("--layers", type=int, default=2, help="number L of stochastic layers")
    p.add_argument("--latent-dim", type=int, default=16, help="size of every z_l")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--samples", metavar="PATH", help="save a PNG grid of 64 samples here")
    args = p.parse_args(argv)

    pyro.set_rng_seed(args.seed)
    device = torch.device(args.device)
    data = load_dataset(args.dataset).to(device)  # binarized images, (N, 1, H, W) in {0, 1}
    bits = 1 / (data.dim * math.log(2))  # nats/image -> bits/dim

    hvae = BottomUpHVAE(data.shape, likelihood=data.kind, latent_dims=args.latent_dim, layers=args.layers).to(device)
    svi = SVI(hvae.model, hvae.guide, Adam({"lr": args.lr}), Trace_ELBO())

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
        # ancestral samples: z_L ∼ N(0, I), down the chain to z_1, then the decoder's pixel probabilities
        save_grid(hlvm.sample(hvae, 64), args.samples, kind=data.kind)
        print(f"wrote {args.samples}")


if __name__ == "__main__":
    main()
