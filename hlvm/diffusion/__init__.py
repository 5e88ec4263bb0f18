"""Gaussian diffusion as plain torch maths: no Pyro effects, no programs.

Everything a diffusion hierarchy computes lives here once, in the γ = −log SNR convention:
noise schedules γ(t), the forward marginals and posteriors q(z_t|x), q(z_s|z_t,x) and the
generative transition p(z_s|z_t) = q(z_s|z_t, x = x̂θ(z_t)), conversions between predictions
(x, ε, score, v, flow, energy), the shared denoiser x̂θ, the analytic bound (prior, reconstruction
and diffusion terms) and the samplers.  Pyro programs (:mod:`hlvm.programs`) call into it.

(Distributions are ``pyro.distributions`` classes — torch distributions with ``to_event`` — but
nothing here runs a Pyro primitive.)
"""
