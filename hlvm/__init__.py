"""hlvm: VAEs, hierarchical VAEs and variational diffusion models as Pyro directed graphical models.

A diffusion model is a top-down hierarchical VAE whose posterior is fixed Gaussian noising and
whose generative transitions share one denoiser x̂θ (De Sousa Ribeiro & Glocker; Kingma et al. 2021).

Layout (docs/architecture.md): :mod:`hlvm.diffusion` (torch maths: schedules, Gaussian diffusion,
parameterizations, the denoiser, the bound, samplers) → :mod:`hlvm.programs` (Pyro pieces: the
chain, likelihoods, layers, DiffusionELBO, the Hierarchy contract, sampling programs) →
:mod:`hlvm.graph` (trace → networkx, checks, drawing) → :mod:`hlvm.eval` → :mod:`hlvm.training` →
:mod:`hlvm.reports` → :mod:`hlvm.cli`; :mod:`hlvm.data` beneath them all.

Importing ``hlvm`` is instant: each public name is imported from its module on first use (PEP 562),
so ``hlvm --help`` and each command's parser never load torch or Pyro.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

#: module → the public names it provides
_EXPORTS = {
    "diffusion.schedules": ["NoiseSchedule", "LinearSchedule", "CosineSchedule", "LearnedLinearSchedule",
                            "MonotoneNetSchedule", "DensitySchedule", "DDPMSchedule", "make_schedule"],
    "diffusion.gaussian": ["alpha_sigma", "snr", "alpha_ts", "sigma_sq_ts", "q_zt_given_x", "q_zt_given_zs",
                           "q_zs_given_zt_x", "p_zs_given_zt", "diffusion_kl", "diffusion_kl_eps", "prior_kl"],
    "diffusion.parameterization": ["to_x", "from_x", "convert", "score_from_energy", "loss_weight"],
    "diffusion.denoiser": ["Denoiser", "XPredictor"],
    "diffusion.oracle": ["GaussianOracle"],
    "diffusion.bound": ["BoundTerms", "diffusion_bound"],
    "diffusion.timesteps": ["TimestepSampler"],
    "nets": ["GammaEmbedding", "FourierFeatures", "MLPBackbone", "UNet", "QuadraticEnergy"],
    "programs.likelihoods": ["BernoulliLikelihood", "Discretized8bitLikelihood", "GaussianLikelihood", "make_likelihood"],
    "programs.chain": ["DiffusionChain", "latent_likelihood"],
    "programs.elbo": ["DiffusionELBO"],
    "programs.contract": ["Hierarchy", "check_hierarchy"],
    "programs.sample": ["sample"],
    "graph": ["render", "render_module", "example_input", "check_mean_field", "guide_direction", "topological_order",
              "pair_graphs", "program_graph", "GraphvizNotFoundError"],
    "eval": ["evaluate", "ParetoKWarning", "per_example_log_weights", "iwae_bound", "pareto_khat", "per_site_terms",
             "active_units"],
    "estimators": ["default_estimator"],
    "registry": ["register"],
    "training.compile": ["compile_step", "CompiledSVI", "RecordedLoss"],
    "training": ["Trainer", "TrainConfig"],
}
_SUBMODULES = ["optim"]  # hlvm.optim.Adam: one torch optimizer over all parameters, for SVI
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [*_WHERE, *_SUBMODULES]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _SUBMODULES or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # hlvm.training, hlvm.eval, … as attributes
    else:
        raise AttributeError(f"module 'hlvm' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
