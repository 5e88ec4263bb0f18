"""A VAE whose prior is a small DDPM over its latent, written in plain Pyro with Pyro's default names:
nothing from hlvm, every step a ``pyro.sample`` site.

Generative story: z_T ∼ N(0, I); z_{t−1} ∼ N(μθ(z_t, t), β_t I) for t = T … 1 (one shared network,
told t); x ∼ Bernoulli(decoder(z_0)).  Inference: z_0 ∼ q(z_0 | x) from an encoder, then the fixed
forward process z_t ∼ N(√(1 − β_t) z_{t−1}, β_t I) — the DDPM posterior of Ho et al. 2020 over a
learned latent (a discrete-time cousin of LSGM, Vahdat, Kreis & Kautz 2021).  The guide runs
bottom-up, opposite to the model, so hlvm's estimator rule picks ``Trace_ELBO``.

    hlvm train examples/gallery/latent_ddpm.py:LatentDDPM --data mnist --epochs 20
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class LatentDDPM(nn.Module):
    def __init__(self, x_dim=784, z_dim=16, num_steps=8, hidden=256, beta_min=0.05, beta_max=0.5):
        super().__init__()
        self.x_dim, self.z_dim, self.num_steps = x_dim, z_dim, num_steps
        self.register_buffer("betas", torch.linspace(beta_min, beta_max, num_steps))
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))
        self.denoiser = nn.Sequential(nn.Linear(z_dim + num_steps, hidden), nn.SiLU(), nn.Linear(hidden, z_dim))

    def mean_prev(self, z_t, t):
        """μθ(z_t, t): the mean of z_{t−1}, residual on z_t, with t as a one-hot."""
        onehot = nn.functional.one_hot(torch.full(z_t.shape[:1], t - 1, device=z_t.device), self.num_steps).to(z_t.dtype)
        return z_t + self.denoiser(torch.cat([z_t, onehot], dim=-1))

    def model(self, x):
        pyro.module("denoiser", self.denoiser)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z_{self.num_steps}", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            for t in range(self.num_steps, 0, -1):
                z = pyro.sample(f"z_{t - 1}", dist.Normal(self.mean_prev(z, t), self.betas[t - 1].sqrt()).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x.reshape(-1, self.x_dim)).chunk(2, dim=-1)  # (B, 2·z) -> 2 × (B, z)
            z = pyro.sample("z_0", dist.Normal(loc, log_scale.clamp(-8, 4).exp()).to_event(1))
            for t in range(1, self.num_steps + 1):
                beta = self.betas[t - 1]
                z = pyro.sample(f"z_{t}", dist.Normal((1 - beta).sqrt() * z, beta.sqrt()).to_event(1))
