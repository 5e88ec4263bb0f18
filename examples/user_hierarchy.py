"""A user-defined hierarchy built from hlvm's pieces: a VAE whose prior is a diffusion.

Generative story (two levels; the upper one diffusion-style):
    u_1 ∼ N(0, I),  u_s ∼ p(u_s | u_t) = q(u_s | u_t, x = x̂θ(u_t; t))  (a DiffusionChain),
    z ∼ p(z | u_0) = N(u_0/α_0, σ_0²/α_0²),   x ∼ Bernoulli(decoder(z)).
Inference: q(z | x) from an encoder, then the chain's fixed posterior q(u_1 | z) ∏ q(u_s | u_t, z).

Nothing is subclassed but ``PyroModule``: the same object trains with ``Trace_ELBO``,
``TraceMeanField_ELBO`` and ``hlvm.DiffusionELBO`` (which collapses the u-chain analytically),
renders with ``hlvm render examples/user_hierarchy.py:LatentDiffusionVAE``, and enters
``hlvm compare``.  (A latent diffusion prior in the spirit of Vahdat, Kreis & Kautz 2021, LSGM.)

Run:  python examples/user_hierarchy.py --steps 200
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method

from hlvm.diffusion.denoiser import Denoiser
from hlvm.programs.chain import DiffusionChain, latent_likelihood
from hlvm.programs.layers import GaussianLayer, mlp
from hlvm.programs.likelihoods import BernoulliLikelihood
from hlvm.nets import MLPBackbone
from hlvm.diffusion.schedules import LinearSchedule


class LatentDiffusionVAE(PyroModule):
    """x ← z ← (u_0 ← … ← u_T): a VAE with a diffusion prior over its latent z."""

    def __init__(self, data_shape=(1, 28, 28), latent_dim: int = 16, T: int | None = None, hidden: int = 256):
        super().__init__()
        d = torch.Size(data_shape).numel()
        self.data_shape, self.latent_dim = tuple(data_shape), latent_dim
        self.likelihood = BernoulliLikelihood(data_shape)
        self.encoder = GaussianLayer(d, latent_dim, hidden)
        self.decoder = mlp(latent_dim, d, hidden)
        denoiser = Denoiser(MLPBackbone((latent_dim,), width=128, depth=2, gamma_range=(-10.0, 6.0)), "eps")
        self.prior = DiffusionChain(denoiser, LinearSchedule(-10.0, 6.0), latent_likelihood((latent_dim,)), T=T, name="u")

    @pyro_method
    def model(self, x=None, batch_size=None):
        b = x.shape[0] if x is not None else batch_size
        with pyro.plate("data", b):
            z = self.prior.model("z", batch_size=b)
            return pyro.sample("x", self.likelihood.from_decoder(self.decoder(z)), obs=x)

    @pyro_method
    def guide(self, x=None, batch_size=None):
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(self.likelihood.to_model_space(x))
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            self.prior.guide(z)


def main(argv=None):
    from hlvm.data import batches, load_dataset
    from hlvm.programs.elbo import DiffusionELBO

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--T", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    pyro.set_rng_seed(0)
    data = load_dataset("mnist5k").to(args.device)
    m = LatentDiffusionVAE(T=args.T).to(args.device)
    svi = pyro.infer.SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-3}), DiffusionELBO())
    step = 0
    while step < args.steps:
        for x in batches(data, 128):
            loss = svi.step(x) / x.shape[0]
            step += 1
            if step % 50 == 0 or step == args.steps:
                print(f"step {step:5d}  −ELBO {loss:8.2f} nats/image")
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
