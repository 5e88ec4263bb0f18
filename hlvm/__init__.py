"""hlvm: VAEs, hierarchical VAEs and variational diffusion models as Pyro directed graphical models.

A diffusion model is a top-down hierarchical VAE whose posterior is fixed Gaussian noising and
whose generative transitions share one denoiser x̂θ (De Sousa Ribeiro & Glocker; Kingma et al. 2021).

Layout (docs/architecture.md): :mod:`hlvm.diffusion` (torch maths: schedules, Gaussian diffusion,
parameterizations, the denoiser, the bound, samplers) → :mod:`hlvm.programs` (Pyro pieces: the
chain, likelihoods, layers, DiffusionELBO, the Hierarchy contract, sampling programs) →
:mod:`hlvm.graph` (trace → networkx, checks, drawing) → :mod:`hlvm.eval` → ``hlvm.train`` →
:mod:`hlvm.cli`.
"""

from .diffusion.schedules import (NoiseSchedule, LinearSchedule, CosineSchedule, LearnedLinearSchedule,
                                  MonotoneNetSchedule, DensitySchedule, DDPMSchedule, make_schedule)
from .diffusion.gaussian import (alpha_sigma, snr, alpha_ts, sigma_sq_ts, q_zt_given_x, q_zt_given_zs,
                                 q_zs_given_zt_x, p_zs_given_zt, diffusion_kl, diffusion_kl_eps, prior_kl)
from .diffusion.parameterization import to_x, from_x, convert, score_from_energy, loss_weight
from .diffusion.denoiser import Denoiser, XPredictor
from .diffusion.oracle import GaussianOracle
from .diffusion.bound import BoundTerms, diffusion_bound
from .diffusion.timesteps import TimestepSampler
from .nets import GammaEmbedding, FourierFeatures, MLPBackbone, UNet, QuadraticEnergy
from .programs.likelihoods import BernoulliLikelihood, Discretized8bitLikelihood, GaussianLikelihood, make_likelihood
from .programs.chain import DiffusionChain, latent_likelihood
from .programs.elbo import DiffusionELBO
from .programs.contract import Hierarchy, check_hierarchy
from .programs.sample import sample
from . import optim  # hlvm.optim.Adam: one torch optimizer over all parameters, for SVI
from .graph import (render, render_module, example_input, check_mean_field, guide_direction, topological_order,
                    pair_graphs, program_graph, GraphvizNotFoundError)
from .eval import (evaluate, ParetoKWarning, per_example_log_weights, iwae_bound, pareto_khat, per_site_terms,
                   active_units)
from .estimators import default_estimator
from .registry import register

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "LinearSchedule", "CosineSchedule", "LearnedLinearSchedule",
    "MonotoneNetSchedule", "DDPMSchedule", "make_schedule",
    "alpha_sigma", "snr", "alpha_ts", "sigma_sq_ts", "q_zt_given_x", "q_zt_given_zs",
    "q_zs_given_zt_x", "p_zs_given_zt", "diffusion_kl", "diffusion_kl_eps", "prior_kl",
    "to_x", "from_x", "convert", "score_from_energy", "loss_weight",
    "Denoiser", "XPredictor", "GaussianOracle", "BoundTerms", "diffusion_bound", "TimestepSampler",
    "GammaEmbedding", "FourierFeatures", "MLPBackbone", "UNet", "QuadraticEnergy",
    "BernoulliLikelihood", "Discretized8bitLikelihood", "GaussianLikelihood", "make_likelihood",
    "DiffusionChain", "latent_likelihood", "DiffusionELBO", "Hierarchy", "check_hierarchy", "sample", "optim",
    "render", "render_module", "example_input", "check_mean_field", "guide_direction", "topological_order",
    "pair_graphs", "program_graph", "GraphvizNotFoundError",
    "evaluate", "ParetoKWarning", "per_example_log_weights", "iwae_bound", "pareto_khat", "per_site_terms",
    "active_units", "default_estimator", "register",
]
