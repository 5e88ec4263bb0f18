"""hlvm: VAEs, hierarchical VAEs and variational diffusion models as Pyro directed graphical models.

A diffusion model is a top-down hierarchical VAE whose posterior is fixed Gaussian noising and
whose generative transitions share one denoiser x̂θ (De Sousa Ribeiro & Glocker; Kingma et al. 2021).
"""

from .diffusion.schedules import (NoiseSchedule, LinearSchedule, CosineSchedule, LearnedLinearSchedule,
                        MonotoneNetSchedule, DDPMSchedule, make_schedule)
from .diffusion.gaussian import (alpha_sigma, snr, alpha_ts, sigma_sq_ts, q_zt_given_x, q_zt_given_zs,
                       q_zs_given_zt_x, diffusion_kl, diffusion_kl_eps, prior_kl)
from .diffusion.parameterization import to_x, from_x, convert, score_from_energy, loss_weight
from .diffusion.denoiser import Denoiser
from .nets import GammaEmbedding, FourierFeatures, MLPBackbone, UNet, QuadraticEnergy
from .diffusion.oracle import GaussianOracle
from .programs.likelihoods import BernoulliLikelihood, Discretized8bitLikelihood, GaussianLikelihood, make_likelihood
from .programs.chain import DiffusionChain, gaussian_decoder
from .programs.elbo import DiffusionELBO
from .diffusion.timesteps import TimestepSampler
from . import optim  # hlvm.optim.Adam: one torch optimizer over all parameters, for SVI
from .graph import (render, render_module, example_input, check_mean_field, guide_direction, topological_order, pair_graphs,
                     program_graph, GraphvizNotFoundError)
from .eval.evaluate import (evaluate, ParetoKWarning, per_example_log_weights, iwae_bound, pareto_khat, per_site_terms,
                       active_units)

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "LinearSchedule", "CosineSchedule", "LearnedLinearSchedule",
    "MonotoneNetSchedule", "DDPMSchedule", "make_schedule",
    "alpha_sigma", "snr", "alpha_ts", "sigma_sq_ts", "q_zt_given_x", "q_zt_given_zs",
    "q_zs_given_zt_x", "diffusion_kl", "diffusion_kl_eps", "prior_kl",
    "to_x", "from_x", "convert", "score_from_energy", "loss_weight",
    "Denoiser", "GammaEmbedding", "FourierFeatures", "MLPBackbone", "UNet", "QuadraticEnergy",
    "GaussianOracle", "BernoulliLikelihood", "Discretized8bitLikelihood", "GaussianLikelihood", "make_likelihood",
    "DiffusionChain", "gaussian_decoder", "DiffusionELBO", "TimestepSampler", "optim",
    "render", "render_module", "example_input", "check_mean_field", "guide_direction", "topological_order", "pair_graphs",
    "program_graph", "GraphvizNotFoundError",
]
__all__ += ["evaluate", "ParetoKWarning", "per_example_log_weights", "iwae_bound", "pareto_khat", "per_site_terms",
            "active_units"]
