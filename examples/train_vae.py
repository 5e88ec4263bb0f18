"""Train a variational autoencoder on binarized MNIST with plain Pyro SVI.

Generative story:  z ∼ N(0, I),  x ∼ Bernoulli(decoder(z))   (28×28 pixels, one Bernoulli each).
Inference:         q(z | x) = N(μφ(x), diag σφ(x)²)           (an encoder network).

The latent z has no parents in the model, so ``TraceMeanField_ELBO`` may replace the Monte Carlo
estimate of KL(q(z|x) ‖ p(z)) by its closed form: a lower-variance estimator of the same ELBO.
Losses are −ELBO in nats per image and in bits per dimension, bpd = nats / (784 · ln 2).

References: Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014; Rezende, Mohamed &
Wierstra, *Stochastic Backpropagation*, ICML 2014.

Run:  python examples/train_vae.py --steps 2000 --samples vae_samples.png [--device cuda]
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
from hlvm.zoo import VAE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (mini-batches)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"],
                   help="MNIST subset (4,000/1,000 images) or scikit-learn's 8×8 digits (fast)")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--samples", metavar="PATH", help="save a PNG grid of 64 samples here")
    args = p.parse_args(argv)

    pyro.set_rng_seed(args.seed)
    device = torch.device(args.device)
    data = load_dataset(args.dataset).to(device)  # binarized images, (N, 1, H, W) in {0, 1}
    bits = 1 / (data.dim * math.log(2))  # nats/image -> bits/dim

    # The model and guide are methods of one PyroModule; its networks move with .to(device).
    vae = VAE(data.shape, likelihood=data.kind, latent_dim=args.latent_dim).to(device)
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr}), TraceMeanField_ELBO())

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
        # ancestral samples: z ∼ N(0, I), then the decoder's pixel probabilities
        save_grid(hlvm.sample(vae, 64), args.samples, kind=data.kind)
        print(f"wrote {args.samples}")


if __name__ == "__main__":
    main()
