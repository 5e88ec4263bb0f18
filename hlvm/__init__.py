"""hlvm: VAEs, hierarchical VAEs and variational diffusion models as Pyro directed graphical models.

A diffusion model is a top-down hierarchical VAE whose posterior is fixed Gaussian noising and
whose generative transitions share one denoiser x̂θ (De Sousa Ribeiro & Glocker; Kingma et al. 2021).
"""

from .schedules import (NoiseSchedule, LinearSchedule, CosineSchedule, LearnedLinearSchedule,
                        MonotoneNetSchedule, DDPMSchedule, make_schedule)
from .gaussian import (alpha_sigma, snr, alpha_ts, sigma_sq_ts, q_zt_given_x, q_zt_given_zs,
                       q_zs_given_zt_x, diffusion_kl, diffusion_kl_eps, prior_kl)
from .parameterization import to_x, from_x, convert, score_from_energy, loss_weight
from .denoiser import Denoiser
from .nets import GammaEmbedding, FourierFeatures, MLPBackbone, UNet, QuadraticEnergy
from .oracle import GaussianOracle

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "LinearSchedule", "CosineSchedule", "LearnedLinearSchedule",
    "MonotoneNetSchedule", "DDPMSchedule", "make_schedule",
    "alpha_sigma", "snr", "alpha_ts", "sigma_sq_ts", "q_zt_given_x", "q_zt_given_zs",
    "q_zs_given_zt_x", "diffusion_kl", "diffusion_kl_eps", "prior_kl",
    "to_x", "from_x", "convert", "score_from_energy", "loss_weight",
    "Denoiser", "GammaEmbedding", "FourierFeatures", "MLPBackbone", "UNet", "QuadraticEnergy",
    "GaussianOracle",
]
