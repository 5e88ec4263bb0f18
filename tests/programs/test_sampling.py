"""Sampling: every model's ancestral samples live in the data's space, and a diffusion chain with the
Bayes-optimal (oracle) denoiser for a Gaussian reproduces that Gaussian.

Closed forms used:

* With x ∼ N(μ, Σ) the oracle x̂(z_t) = E[x | z_t] = μ + A_t (z_t − α_t μ), A_t = α_t Σ (α_t² Σ + σ_t² I)⁻¹,
  is affine, so ancestral sampling z_s = μ_Q(z_t, x̂(z_t)) + σ_Q ξ is a linear-Gaussian recursion
  whose output law N(m_K, C_K) after K steps is computed exactly (``exact_sampler_law``, written
  here from Table 1's formulas, independently of hlvm.gaussian).  Samples must match it to 5 SE.
* That law differs from N(μ, Σ) by the O(1/K) discretization error of a K-step model (the plug-in
  p(z_s|z_t) = q(z_s|z_t, x̂) drops Var(x|z_t)): shrinking as 1/K, and below stated bounds.
* Annealed Langevin predictor–corrector sampling with the exact score must also land on N(μ, Σ).

Standard errors for n samples of a Gaussian with covariance C: SE(mean_i) = sqrt(C_ii/n) and
SE(S_ij) = sqrt((C_ii C_jj + C_ij²)/(n − 1)) for the sample covariance S.
"""

import pyro
import pytest
import torch

import hlvm
from hlvm.programs.chain import DiffusionChain
from hlvm.programs.likelihoods import GaussianLikelihood
from hlvm.diffusion.oracle import GaussianOracle
from hlvm.diffusion.schedules import LinearSchedule
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import DEVICE, oracle_diffusion, tensor, user_hierarchy_class

SHAPE = (1, 8, 8)
N = 20_000
GAMMA_RANGE = (-12.0, 12.0)  # α₁² = sigmoid(−12) ≈ 6e-6: z_1 ∼ N(0, I) is q(z_1) to ~1e-5


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _latent_diffusion_vae(**kw):
    return user_hierarchy_class()(**kw)


# ---------------------------------------------------------------------------------------------
# every model: shapes and support
# ---------------------------------------------------------------------------------------------
BINARY_MODELS = {
    "vae": lambda: VAE(SHAPE, latent_dim=4, hidden=32),
    "hvae-bu": lambda: BottomUpHVAE(SHAPE, latent_dims=(8, 4), hidden=32),
    "hvae-td": lambda: TopDownHVAE(SHAPE, layers=3, latent_dim=4, hidden=32),
    "hvae-td-shared": lambda: TopDownHVAE(SHAPE, layers=3, latent_dim=4, hidden=32, shared=True),
    "hvae-td-diffusion": lambda: TopDownHVAE(SHAPE, layers=3, hidden=32, posterior="diffusion", transition="denoiser"),
    "vdm-T4": lambda: VDM(SHAPE, T=4, width=32, depth=1),
    "vdm-continuous": lambda: VDM(SHAPE, T=None, width=32, depth=1),
}


def _build(factory):
    pyro.set_rng_seed(7)
    return factory().to(DEVICE)


def _sample(m, n, return_mean):
    if isinstance(m, VDM) and m.T is None:
        return m.sample(n, steps=16, return_mean=return_mean)  # any grid serves a continuous-time model
    if isinstance(m, VDM):
        return m.sample(n, return_mean=return_mean)
    return hlvm.sample(m, n, return_mean=return_mean)  # the program run forward (no sample method)


@pytest.mark.parametrize("name", list(BINARY_MODELS))
def test_binary_samples_shape_and_support(name):
    m = _build(BINARY_MODELS[name])
    x = _sample(m, 500, return_mean=False)
    assert x.shape == (500,) + SHAPE
    assert bool(((x == 0) | (x == 1)).all())
    p = _sample(m, 500, return_mean=True)
    assert p.shape == (500,) + SHAPE
    assert bool(((p >= 0) & (p <= 1)).all())
    if not isinstance(m, VDM):  # (VDM's decoder at γ_0 = −13.3 has logits ~1e6: its means are 0 or 1)
        assert bool(((p > 0) & (p < 1)).any())
    # the prior predictive of the Pyro program itself is in the support too
    with torch.no_grad():
        y = m.model(batch_size=64)
    assert y.shape == (64,) + SHAPE and bool(((y == 0) | (y == 1)).all())


@pytest.mark.parametrize("name", ["vae", "hvae-td", "vdm-T4"])
def test_sample_means_agree_with_means_of_samples(name):
    """E[x] two ways: the average of binary samples and the average of the decoder means (each draw
    from fresh latents).  Per pixel, within 5 SE (SE of a {0,1} average ≤ 0.5/√n)."""
    m = _build(BINARY_MODELS[name])
    n = 8000
    pyro.set_rng_seed(1)
    x = _sample(m, n, return_mean=False).flatten(1)
    p = _sample(m, n, return_mean=True).flatten(1)
    se = torch.sqrt(x.var(0) / n + p.var(0) / n).clamp_min(0.5 / n)
    z = ((x.mean(0) - p.mean(0)) / se).abs()
    assert z.max() < 5, z.max()


def test_vdm_8bit_samples_are_grey_levels():
    m = _build(lambda: VDM((16,), likelihood="8bit", T=4, width=32, depth=1))
    x = m.sample(300, return_mean=False)
    assert x.shape == (300, 16)
    assert bool(((x >= 0) & (x <= 255) & (x == x.round())).all())
    mu = m.sample(300, return_mean=True)
    assert bool(((mu >= 0) & (mu <= 255)).all())


def test_latent_diffusion_vae_ancestral_samples():
    """The user-defined hierarchy has no ``sample`` method: its Pyro model is the ancestral sampler."""
    m = _build(lambda: _latent_diffusion_vae(data_shape=SHAPE, latent_dim=4, T=3, hidden=32))
    with torch.no_grad():
        tr = pyro.poutine.trace(m.model).get_trace(batch_size=200)
    x, z = tr.nodes["x"]["value"], tr.nodes["z"]["value"]
    assert x.shape == (200,) + SHAPE and bool(((x == 0) | (x == 1)).all())
    assert z.shape == (200, 4) and bool(torch.isfinite(z).all())
    assert [k for k in tr.nodes if k.startswith("u_")] == ["u_3", "u_2", "u_1", "u_0"]


# ---------------------------------------------------------------------------------------------
# the oracle chain: closed-form checks
# ---------------------------------------------------------------------------------------------
def _gaussian():
    mean = tensor([0.3, -0.5])
    cov = tensor([[0.6, 0.25], [0.25, 0.4]])
    return mean, cov


def _oracle_chain():
    mean, cov = _gaussian()
    chain = DiffusionChain(GaussianOracle(mean, cov), LinearSchedule(*GAMMA_RANGE),
                           GaussianLikelihood((2,)), T=None)
    return chain.to(DEVICE), mean, cov


def exact_sampler_law(mean, cov, steps):
    """Mean and covariance of ``chain.sample(steps=K)`` with the oracle denoiser, in closed form.

    Table 1 (De Sousa Ribeiro & Glocker): α² = sigmoid(−γ), σ² = sigmoid(γ), α_{t|s} = α_t/α_s,
    σ²_{t|s} = σ_t² − α²_{t|s} σ_s², μ_Q = (α_{t|s} σ_s²/σ_t²) z_t + (α_s σ²_{t|s}/σ_t²) x̂,
    σ_Q² = σ²_{t|s} σ_s²/σ_t²; then x ∼ N(z_0/α_0, σ_0²/α_0²).  The recursion is affine in z_t.
    """
    d = mean.numel()
    eye = torch.eye(d, dtype=torch.float64)
    mu, sig = mean.double().cpu(), cov.double().cpu()
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    g = GAMMA_RANGE[0] + (GAMMA_RANGE[1] - GAMMA_RANGE[0]) * t
    a2, s2 = torch.sigmoid(-g), torch.sigmoid(g)
    m, c = torch.zeros(d, dtype=torch.float64), eye.clone()  # z_1 ∼ N(0, I)
    for i in range(steps, 0, -1):
        at, as_, st2, ss2 = a2[i].sqrt(), a2[i - 1].sqrt(), s2[i], s2[i - 1]
        ats = at / as_
        sts2 = st2 - ats**2 * ss2
        cz, cx, var_q = ats * ss2 / st2, as_ * sts2 / st2, sts2 * ss2 / st2
        gain = at * sig @ torch.linalg.inv(at**2 * sig + st2 * eye)  # x̂ = μ + gain (z − α μ)
        M = cz * eye + cx * gain
        m = M @ m + cx * (mu - at * gain @ mu)
        c = M @ c @ M.T + var_q * eye
    a0, s0 = a2[0].sqrt(), s2[0].sqrt()
    return m / a0, c / a0**2 + (s0 / a0) ** 2 * eye


def _standard_errors(c, n):
    diag = torch.diagonal(c)
    return (diag / n).sqrt(), ((diag[:, None] * diag[None, :] + c**2) / (n - 1)).sqrt()


def _assert_moments(x, mean, cov, extra_cov_tol=0.0, what=""):
    """Sample mean within 5 SE of ``mean``; sample covariance within 5 SE (+ an allowance) of ``cov``."""
    x = x.double().cpu()
    mean, cov = mean.double().cpu(), cov.double().cpu()
    se_m, se_c = _standard_errors(cov, x.shape[0])
    err_m, err_c = (x.mean(0) - mean).abs(), (torch.cov(x.T) - cov).abs()
    ok_m, ok_c = bool((err_m < 5 * se_m).all()), bool((err_c < 5 * se_c + extra_cov_tol).all())
    assert ok_m and ok_c, (f"{what}: mean error {err_m.tolist()} (5 SE: {(5 * se_m).tolist()}); covariance "
                           f"{torch.cov(x.T).tolist()} vs {cov.tolist()}, error {err_c.tolist()} "
                           f"(5 SE + {extra_cov_tol}: {(5 * se_c + extra_cov_tol).tolist()})")


def test_exact_sampler_law_recursion_matches_hlvm_posterior():
    """The hand-written recursion and hlvm's q(z_s | z_t, x) agree on one step (guards the oracle
    law itself, so a mismatch below means the sampler, not this helper)."""
    from hlvm.diffusion.gaussian import q_zs_given_zt_x

    g_s, g_t = tensor(-1.0), tensor(0.5)
    z, x = tensor([[0.7, -1.2]]), tensor([[0.1, 0.4]])
    a2s, a2t, s2s, s2t = torch.sigmoid(-g_s), torch.sigmoid(-g_t), torch.sigmoid(g_s), torch.sigmoid(g_t)
    ats = (a2t / a2s).sqrt()
    sts2 = s2t - ats**2 * s2s
    loc = ats * s2s / s2t * z + a2s.sqrt() * sts2 / s2t * x
    q = q_zs_given_zt_x(z, x, g_s, g_t)
    torch.testing.assert_close(q.loc, loc)
    torch.testing.assert_close(q.scale, (sts2 * s2s / s2t).sqrt().expand_as(loc))


@pytest.mark.parametrize("steps", [20, 200])
def test_ancestral_samples_match_the_exact_sampler_law(steps):
    chain, mean, cov = _oracle_chain()
    law_m, law_c = exact_sampler_law(mean, cov, steps)
    x = chain.sample(N, steps=steps)
    assert x.shape == (N, 2)
    _assert_moments(x, law_m, law_c, what=f"{steps} steps vs exact law")


def test_ancestral_discretization_error_is_small_and_shrinks_as_one_over_steps():
    """N(m_K, C_K) → N(μ, Σ): the mean is exact (to the ~1e-6 of z_1 ∼ N(0, I)); the covariance is
    too small by O(1/K) (measured: max |C_K − Σ| = 0.25 at K = 20, 0.035 at K = 200, 0.0071 at
    K = 1000).  Asserted: < 0.35, < 0.05, < 0.01, and the error ratio K=200 : K=1000 ∈ [4, 6]."""
    mean, cov = _gaussian()
    errs = {}
    for steps, bound in ((20, 0.35), (200, 0.05), (1000, 0.01)):
        m, c = exact_sampler_law(mean, cov, steps)
        assert (m - mean.cpu()).abs().max() < 1e-5
        errs[steps] = (c - cov.cpu()).abs().max().item()
        assert errs[steps] < bound, (steps, errs[steps])
        assert bool((torch.linalg.eigvalsh(cov.cpu() - c) > 0).all())  # under-dispersed, never over
    assert 4 < errs[200] / errs[1000] < 6, errs


@pytest.mark.parametrize("steps,allowance", [(200, 0.05), (20, 0.35)])
def test_ancestral_samples_match_the_gaussian(steps, allowance):
    """Against (μ, Σ) directly: 5 SE plus the stated O(1/K) discretization allowance (previous test)."""
    chain, mean, cov = _oracle_chain()
    pyro.set_rng_seed(3)
    _assert_moments(chain.sample(N, steps=steps), mean, cov, extra_cov_tol=allowance, what=f"{steps} steps")


def test_langevin_samples_match_the_gaussian():
    """Predictor–corrector sampling with the exact score ŝ = −(α²Σ + σ²I)⁻¹(z − αμ): the corrector
    removes most of the predictor's under-dispersion.  Tolerance: 5 SE, plus 0.05 on the covariance
    for the Langevin step's own discretization bias (a correct corrector with batch-averaged step
    size measured ≤ 0.024 at 100–200 levels)."""
    chain, mean, cov = _oracle_chain()
    pyro.set_rng_seed(4)
    x = chain.langevin_sample(N, steps=100)
    assert x.shape == (N, 2) and bool(torch.isfinite(x).all())
    _assert_moments(x, mean, cov, extra_cov_tol=0.05, what="Langevin, 100 levels")


def test_langevin_without_corrector_is_ancestral_sampling():
    """corrector_steps=0 leaves only the predictor: the ancestral sampler's exact law."""
    chain, mean, cov = _oracle_chain()
    law_m, law_c = exact_sampler_law(mean, cov, 100)
    pyro.set_rng_seed(5)
    _assert_moments(chain.langevin_sample(N, steps=100, corrector_steps=0), law_m, law_c, what="predictor only")


# ---------------------------------------------------------------------------------------------
# sampling any hierarchy by running its program forward (hlvm.sample)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,steps", [(20, None), (None, 20)])
def test_program_run_forward_has_the_exact_sampler_law(T, steps):
    """hlvm.sample runs the Pyro model with x unobserved: a 20-step chain (discrete T = 20, or the
    continuous-time chain traced with 20 steps) has the closed-form law of 20 ancestral steps."""
    mean, cov = _gaussian()
    h = oracle_diffusion(mean, cov, LinearSchedule(*GAMMA_RANGE), T).to(DEVICE)
    law_m, law_c = exact_sampler_law(mean, cov, 20)
    pyro.set_rng_seed(6)
    x = hlvm.sample(h, N, steps=steps, return_mean=False)
    assert x.shape == (N, 2)
    _assert_moments(x, law_m, law_c, what="program run forward, 20 steps")


def _assert_same_law(a, b, what):
    """Two-sample test on the first two moments: means and covariances within 5 SE of each other."""
    a, b = a.flatten(1).double().cpu(), b.flatten(1).double().cpu()
    n = a.shape[0]
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    c = (ca + cb) / 2
    d = torch.diagonal(c)
    se_m = (2 * d / n).sqrt()
    se_c = (2 * (d[:, None] * d[None, :] + c**2) / (n - 1)).sqrt()
    err_m, err_c = (a.mean(0) - b.mean(0)).abs(), (ca - cb).abs()
    assert bool((err_m < 5 * se_m).all()) and bool((err_c < 5 * se_c).all()), (
        f"{what}: mean difference {err_m.tolist()} (5 SE {(5 * se_m).tolist()}); covariance difference "
        f"{err_c.tolist()} (5 SE {(5 * se_c).tolist()})")


@pytest.mark.parametrize("T", [4, None])
def test_vdm_sampler_equals_the_program_in_law(T):
    """VDM.sample (the zoo's fast ancestral sampler, no Pyro) and hlvm.sample (the Pyro program run
    forward) draw from the same law: a VDM with an untrained 2-layer MLP denoiser on 3-D data."""
    pyro.set_rng_seed(2)
    vdm = VDM((3,), likelihood="continuous", T=T, width=16, depth=1, gamma_min=-6.0, gamma_max=6.0).to(DEVICE)
    steps = None if T else 4
    pyro.set_rng_seed(8)
    fast = vdm.sample(N, steps=steps, return_mean=False)
    program = hlvm.sample(vdm, N, steps=steps, return_mean=False)
    assert fast.shape == program.shape == (N, 3)
    _assert_same_law(fast, program, f"VDM T={T}")
    # and the means of p(x | z_0) the same way
    _assert_same_law(vdm.sample(N, steps=steps, return_mean=True), hlvm.sample(vdm, N, steps=steps), f"VDM T={T}, means")
