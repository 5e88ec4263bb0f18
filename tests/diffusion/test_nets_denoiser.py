"""Backbones, the shared Denoiser wrapper, and the closed-form Gaussian oracle.

The Denoiser is checked with analytic backbones (affine maps, quadratic energies, and "oracle"
backbones that return the true target for known (x, ε)), against conversions written out by hand.
"""

import math

import pytest
import torch
from torch import nn

from hlvm.diffusion.denoiser import Denoiser
from hlvm.nets import FourierFeatures, GammaEmbedding, MLPBackbone, QuadraticEnergy, UNet
from hlvm.diffusion.oracle import GaussianOracle
from hlvm.diffusion.parameterization import TARGETS, convert
from hlvm.diffusion.schedules import CosineSchedule

F64 = torch.float64


@pytest.fixture
def tol(dtype):
    """Agreement expected between two exact formulas in the suite's dtype."""
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)


def _alpha_sigma(gamma, like):
    g = gamma.reshape(gamma.shape + (1,) * (like.dim() - gamma.dim()))
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


# --- backbones -------------------------------------------------------------------------------
@pytest.mark.parametrize("data_shape, fourier", [((2,), None), ((5,), (2, 4)), ((1, 6, 6), None)])
def test_mlp_backbone_shape_and_batch_independence(data_shape, fourier, dtype, device, tol):
    torch.manual_seed(0)
    net = MLPBackbone(data_shape, width=16, depth=2, emb_dim=8, fourier=fourier).to(dtype=dtype, device=device)
    z = torch.randn((4,) + data_shape, dtype=dtype, device=device)
    gamma = torch.linspace(-10, 4, 4, dtype=dtype, device=device)
    out = net(z, gamma)
    assert out.shape == z.shape and torch.isfinite(out).all()
    # per-example: row i depends only on (z_i, γ_i)
    torch.testing.assert_close(net(z[2:3], gamma[2:3]), out[2:3], **tol)
    # a scalar γ is broadcast over the batch
    torch.testing.assert_close(net(z, gamma[1]), net(z, gamma[1].expand(4)), rtol=0, atol=0)


def test_mlp_backbone_out_dim(dtype):
    net = MLPBackbone((3,), width=8, depth=1, emb_dim=4, out_dim=7).to(dtype)
    assert net(torch.randn(5, 3, dtype=dtype), torch.zeros(5, dtype=dtype)).shape == (5, 7)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_unet_shape_and_batch_independence(channels, size, dtype, device, tol):
    torch.manual_seed(0)
    net = UNet(in_channels=channels, base=8, mults=(1, 2, 2), emb_dim=16).to(dtype=dtype, device=device)
    z = torch.randn(2, channels, size, size, dtype=dtype, device=device)
    gamma = torch.tensor([-5.0, 2.0], dtype=dtype, device=device)
    out = net(z, gamma)
    assert out.shape == z.shape and torch.isfinite(out).all()
    # GroupNorm is per-example, so the batch does not mix
    loose = dict(rtol=1e-8, atol=1e-8) if dtype == torch.float64 else tol
    torch.testing.assert_close(net(z[1:], gamma[1:]), out[1:], **loose)
    # γ conditions the output
    assert not torch.allclose(net(z, gamma.flip(0)), out)


def test_unet_with_fourier_features(dtype):
    torch.manual_seed(0)
    net = UNet(in_channels=1, base=8, mults=(1, 2), emb_dim=8, fourier=(6, 7)).to(dtype)
    z = torch.rand(2, 1, 8, 8, dtype=dtype)
    assert net.conv_in.in_channels == 1 * 5
    assert net(z, torch.zeros((), dtype=dtype)).shape == z.shape


def test_unet_rejects_bad_input(dtype):
    net = UNet(in_channels=1, base=8, mults=(1, 2, 2), emb_dim=8).to(dtype)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 30, 30, dtype=dtype), torch.zeros(1, dtype=dtype))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 28, 26, dtype=dtype), torch.zeros(1, dtype=dtype))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(torch.randn(1, 28, 28, dtype=dtype), torch.zeros(1, dtype=dtype))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(torch.randn(1, 1, 1, 28, 28, dtype=dtype), torch.zeros(1, dtype=dtype))


def test_fourier_features_values(dtype, tol):
    ff = FourierFeatures(n_min=2, n_max=4)
    assert ff.multiplier == 1 + 2 * 3
    z = torch.rand(3, 2, 4, 5, dtype=dtype)
    out = ff(z)
    assert out.shape == (3, 2 * ff.multiplier, 4, 5)
    torch.testing.assert_close(out[:, :2], z, rtol=0, atol=0)
    n_values = [2, 3, 4]
    k = len(n_values)
    for c in range(2):
        for j, n in enumerate(n_values):
            torch.testing.assert_close(out[:, 2 + c * k + j], torch.sin(2**n * math.pi * z[:, c]), **tol)
            torch.testing.assert_close(out[:, 2 + 2 * k + c * k + j], torch.cos(2**n * math.pi * z[:, c]),
                                       **tol)


def test_fourier_features_flat_default(dtype, tol):
    ff = FourierFeatures()  # n = 6, 7, 8 on flat (B, D) data
    z = torch.rand(4, 3, dtype=dtype)
    out = ff(z)
    assert out.shape == (4, 3 * ff.multiplier) and ff.multiplier == 7
    sines = out[:, 3:12].reshape(4, 3, 3)  # (B, D, K)
    expected = torch.stack([torch.sin(2.0**n * math.pi * z) for n in (6, 7, 8)], dim=-1)
    torch.testing.assert_close(sines, expected, **tol)
    with pytest.raises(ValueError, match="n_min"):
        FourierFeatures(5, 4)


def test_gamma_embedding_sinusoids(dtype, tol):
    emb = GammaEmbedding(dim=8, gamma_range=(-10.0, 10.0)).to(dtype)
    emb.mlp = nn.Identity()  # expose the sinusoids
    gamma = torch.tensor([-10.0, 0.0, 10.0], dtype=dtype)
    out = emb(gamma)
    tau = torch.tensor([0.0, 500.0, 1000.0], dtype=dtype)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4, dtype=dtype) / 3)
    arg = tau[:, None] * freqs
    torch.testing.assert_close(out, torch.cat([arg.sin(), arg.cos()], -1), **tol)
    with pytest.raises(ValueError, match="even"):
        GammaEmbedding(dim=7)
    with pytest.raises(ValueError, match="gamma_range"):
        GammaEmbedding(gamma_range=(1.0, 0.0))


# --- analytic backbones ------------------------------------------------------------------------
class Affine(nn.Module):
    """out = c ⊙ z + b + d·γ (per example): a known analytic backbone."""

    def __init__(self, c, b, d=0.3):
        super().__init__()
        self.register_buffer("c", c)
        self.register_buffer("b", b)
        self.d = d
        self.seen_gamma = None

    def forward(self, z, gamma):
        self.seen_gamma = gamma
        return self.c * z + self.b + self.d * gamma.reshape(gamma.shape + (1,) * (z.dim() - 1))


class Fixed(nn.Module):
    """Ignores its input and returns a fixed tensor (an oracle for one known (x, ε))."""

    def __init__(self, out):
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, z, gamma):
        return self.out


@pytest.fixture
def batch(dtype, device):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, 2, generator=g, dtype=dtype).to(device)
    gamma = torch.tensor([-8.0, -1.0, 0.5, 6.0], dtype=dtype, device=device)
    dgamma = torch.tensor([0.5, 3.0, 18.3, 40.0], dtype=dtype, device=device)
    c = torch.randn(3, 2, generator=g, dtype=dtype).to(device)
    b = torch.randn(3, 2, generator=g, dtype=dtype).to(device)
    return z, gamma, dgamma, c, b


PARAMS = ("x", "eps", "score", "v", "flow")


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("target", TARGETS)
def test_denoiser_predict_is_convert_of_backbone(param, target, batch, tol):
    z, gamma, dgamma, c, b = batch
    den = Denoiser(Affine(c, b), param)
    out = c * z + b + 0.3 * gamma[:, None, None]
    expected = convert(out, param, target, z, gamma, dgamma)
    torch.testing.assert_close(den.predict(z, gamma, target, dgamma_dt=dgamma), expected, **tol)
    assert den.backbone.seen_gamma.shape == (4,)


@pytest.mark.parametrize("param", PARAMS)
def test_denoiser_x_hat_by_hand(param, batch, tol):
    """x̂ of each parameterization written out from Table 1 / the design notes."""
    z, gamma, dgamma, c, b = batch
    out = c * z + b + 0.3 * gamma[:, None, None]
    alpha, sigma = _alpha_sigma(gamma, z)
    dg = dgamma[:, None, None]
    by_hand = {
        "x": out,
        "eps": (z - sigma * out) / alpha,
        "score": (z + sigma**2 * out) / alpha,
        "v": alpha * z - sigma * out,
        "flow": alpha * z - 2 * out / (alpha * dg),
    }[param]
    den = Denoiser(Affine(c, b), param)
    torch.testing.assert_close(den(z, gamma, dgamma_dt=dgamma), by_hand, **tol)


def test_eps_denoiser_quantities_by_hand(batch, tol):
    z, gamma, _, c, b = batch
    den = Denoiser(Affine(c, b), "eps")
    eps_hat = c * z + b + 0.3 * gamma[:, None, None]
    alpha, sigma = _alpha_sigma(gamma, z)
    x_hat = (z - sigma * eps_hat) / alpha
    torch.testing.assert_close(den(z, gamma), x_hat, **tol)
    torch.testing.assert_close(den.eps_hat(z, gamma), eps_hat, **tol)
    torch.testing.assert_close(den.score(z, gamma), -eps_hat / sigma, **tol)
    torch.testing.assert_close(den.predict(z, gamma, "v"), alpha * eps_hat - sigma * x_hat, **tol)


@pytest.mark.parametrize("param", PARAMS)
def test_denoiser_recovers_truth_from_true_target(param, device):
    """A backbone that outputs the *true* target for known (x, ε) makes x̂ = x and ε̂ = ε.

    The flow target u = dz_t/dt = α'(t) x + σ'(t) ε is built with α', σ' from finite differences of
    a cosine schedule, independently of the library's closed form (float64: finite differences).
    """
    dtype = F64
    sched = CosineSchedule().to(dtype=dtype, device=device)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0.1, 0.45, 0.8], dtype=dtype, device=device)
    x = torch.randn(3, 5, generator=g, dtype=dtype).to(device)
    eps = torch.randn(3, 5, generator=g, dtype=dtype).to(device)
    with torch.no_grad():
        gamma, dgamma = sched(t), sched.dgamma_dt(t)
        alpha, sigma = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
        h = 1e-6
        d_alpha = ((sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h))[:, None]
        d_sigma = ((sched.sigma(t + h) - sched.sigma(t - h)) / (2 * h))[:, None]
    z = alpha * x + sigma * eps
    truth = {
        "x": x,
        "eps": eps,
        "score": -(z - alpha * x) / sigma**2,  # ∇_z log N(z; αx, σ²)
        "v": alpha * eps - sigma * x,
        "flow": d_alpha * x + d_sigma * eps,
    }
    den = Denoiser(Fixed(truth[param]), param)
    tol = dict(rtol=1e-6, atol=1e-6) if param == "flow" else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(den(z, gamma, dgamma_dt=dgamma), x, **tol)
    torch.testing.assert_close(den.eps_hat(z, gamma, dgamma_dt=dgamma), eps, **tol)
    for target in TARGETS:
        torch.testing.assert_close(den.predict(z, gamma, target, dgamma_dt=dgamma), truth[target], **tol)


def test_flow_denoiser_needs_dgamma(batch):
    z, gamma, dgamma, c, b = batch
    den = Denoiser(Affine(c, b), "flow")
    with pytest.raises(ValueError, match="dgamma_dt"):
        den(z, gamma)
    with pytest.raises(ValueError, match="dgamma_dt"):
        den.eps_hat(z, gamma)
    # to x-denoisers, asking for a flow needs γ' as well
    with pytest.raises(ValueError, match="dgamma_dt"):
        Denoiser(Affine(c, b), "x").predict(z, gamma, "flow")


# --- energy parameterization ------------------------------------------------------------------
class Quadratic(nn.Module):
    """E(z) = ½ (z − m)ᵀ A (z − m) per example."""

    def __init__(self, A, m):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("m", m)

    def forward(self, z, gamma):
        r = z - self.m
        return 0.5 * torch.einsum("bi,ij,bj->b", r, self.A, r)


@pytest.fixture
def spd(dtype, device):
    g = torch.Generator().manual_seed(5)
    L = torch.randn(4, 4, generator=g, dtype=dtype)
    A = (L @ L.T + 0.5 * torch.eye(4, dtype=dtype)).to(device)
    m = torch.randn(4, generator=g, dtype=dtype).to(device)
    z = torch.randn(6, 4, generator=g, dtype=dtype).to(device)
    gamma = torch.linspace(-9, 5, 6, dtype=dtype, device=device)
    return A, m, z, gamma


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad", "eval"])
def test_energy_denoiser_closed_form(spd, grad_mode, tol):
    A, m, z, gamma = spd
    den = Denoiser(Quadratic(A, m), "energy")
    if grad_mode == "eval":
        den.eval()
    ctx = torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad()
    with ctx:
        s_hat = den.score(z, gamma)
        x_hat = den(z, gamma)
        eps_hat = den.eps_hat(z, gamma)
    expected = -(z - m) @ A  # −A(z − m), A symmetric
    torch.testing.assert_close(s_hat, expected, **tol)
    alpha, sigma = _alpha_sigma(gamma, z)
    torch.testing.assert_close(x_hat, (z + sigma**2 * expected) / alpha, **tol)
    torch.testing.assert_close(eps_hat, -sigma * expected, **tol)


def test_energy_denoiser_is_differentiable_in_parameters(spd, tol):
    """With create_graph the score carries gradients to the energy's parameters (training)."""
    A, m, z, gamma = spd
    energy = Quadratic(A, m)
    energy.m = nn.Parameter(m.clone())
    den = Denoiser(energy, "energy").train()
    (g,) = torch.autograd.grad(den.score(z, gamma).sum(), [energy.m])
    # ŝ = −A(z − m)  ⇒  ∂ Σ ŝ / ∂m = A·1 summed over the batch
    torch.testing.assert_close(g, z.shape[0] * A.sum(0), **tol)


def test_quadratic_energy_of_affine_backbone(spd, tol):
    """E = ½‖z − f(z)‖² with f(z) = c z + b: ŝ = −(1 − c)((1 − c) z − b) elementwise."""
    _, _, z, gamma = spd
    c = torch.linspace(-0.5, 0.7, 4, dtype=z.dtype, device=z.device)
    b = torch.linspace(1.0, -1.0, 4, dtype=z.dtype, device=z.device)
    den = Denoiser(QuadraticEnergy(Affine(c, b, d=0.0)), "energy")
    expected = -(1 - c) * ((1 - c) * z - b)
    torch.testing.assert_close(den.score(z, gamma), expected, **tol)


def test_energy_of_wrong_shape_raises(spd):
    A, m, z, gamma = spd

    class PerCoordinate(nn.Module):
        def forward(self, z, gamma):
            return 0.5 * (z - m) ** 2  # (B, D) instead of (B,)

    with pytest.raises(ValueError, match="energy must have shape"):
        Denoiser(PerCoordinate(), "energy").score(z, gamma)


# --- validation --------------------------------------------------------------------------------
def test_denoiser_validation(batch):
    z, gamma, dgamma, c, b = batch
    den = Denoiser(Affine(c, b), "eps")
    for bad in (gamma[:3], gamma[:, None], torch.zeros(4, 1, dtype=z.dtype), torch.zeros(2, 2, dtype=z.dtype)):
        with pytest.raises(ValueError, match="gamma_t must be a scalar or of shape"):
            den(z, bad)

    class WrongShape(nn.Module):
        def forward(self, z, gamma):
            return z[:, :2]

    with pytest.raises(ValueError, match="backbone output shape"):
        Denoiser(WrongShape(), "x")(z, gamma)
    with pytest.raises(ValueError, match="unknown parameterization 'noise'"):
        Denoiser(Affine(c, b), "noise")
    with pytest.raises(ValueError, match="unknown parameterization 'energy'"):
        den.predict(z, gamma, "energy")  # nothing converts *to* an energy


def test_denoiser_scalar_gamma_broadcasts(batch):
    z, gamma, _, c, b = batch
    den = Denoiser(Affine(c, b), "v")
    torch.testing.assert_close(den(z, gamma[2]), den(z, gamma[2].expand(4)), rtol=0, atol=0)
    torch.testing.assert_close(den(z, float(gamma[2])), den(z, gamma[2].expand(4)), rtol=0, atol=0)


# --- the Gaussian oracle ----------------------------------------------------------------------
@pytest.fixture
def gaussian3(dtype, device):
    g = torch.Generator().manual_seed(7)
    L = torch.randn(3, 3, generator=g, dtype=dtype)
    cov = (L @ L.T + 0.3 * torch.eye(3, dtype=dtype)).to(device)
    mean = torch.randn(3, generator=g, dtype=dtype).to(device)
    return mean, cov


def _posterior_mean_by_conditioning(mean, cov, z, gamma):
    """E[x | z] from the joint Gaussian of (x, z = αx + σε): μ + Σ_xz Σ_zz⁻¹ (z − α μ)."""
    out = []
    eye = torch.eye(mean.numel(), dtype=z.dtype, device=z.device)
    for zi, gi in zip(z, gamma):
        a2, s2 = torch.sigmoid(-gi), torch.sigmoid(gi)
        a = a2.sqrt()
        sxz = a * cov  # Cov(x, z)
        szz = a2 * cov + s2 * eye  # Cov(z, z)
        out.append(mean + sxz @ torch.linalg.solve(szz, zi - a * mean))
    return torch.stack(out)


def test_gaussian_oracle_posterior_mean(gaussian3, tol):
    mean, cov = gaussian3
    oracle = GaussianOracle(mean, cov)
    g = torch.Generator().manual_seed(8)
    z = torch.randn(5, 3, generator=g, dtype=mean.dtype).to(mean.device) * 2
    gamma = torch.tensor([-12.0, -3.0, 0.0, 2.5, 9.0], dtype=mean.dtype, device=mean.device)
    expected = _posterior_mean_by_conditioning(mean, cov, z, gamma)
    torch.testing.assert_close(oracle(z, gamma), expected, **tol)
    # a scalar level is shared by the batch
    torch.testing.assert_close(oracle(z, gamma[1]),
                               _posterior_mean_by_conditioning(mean, cov, z, gamma[1].expand(5)),
                               **tol)


def test_gaussian_oracle_matches_monte_carlo_regression(gaussian3):
    """E[x | z] is linear in z: a least-squares fit of x on (z, 1) over samples recovers it."""
    mean, cov = gaussian3
    oracle = GaussianOracle(mean, cov)
    gamma = torch.tensor(-0.5, dtype=mean.dtype, device=mean.device)
    n = 200_000
    g = torch.Generator().manual_seed(9)
    x = mean + torch.randn(n, 3, generator=g, dtype=mean.dtype).to(mean.device) @ torch.linalg.cholesky(cov).T
    a, s = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    z = a * x + s * torch.randn(n, 3, generator=g, dtype=mean.dtype).to(mean.device)
    design = torch.cat([z, torch.ones(n, 1, dtype=z.dtype, device=z.device)], 1)
    coef = torch.linalg.lstsq(design, x).solution  # (4, 3)
    z_test = torch.randn(4, 3, generator=g, dtype=mean.dtype).to(mean.device)
    mc = torch.cat([z_test, torch.ones(4, 1, dtype=z.dtype, device=z.device)], 1) @ coef
    torch.testing.assert_close(oracle(z_test, gamma), mc, rtol=0, atol=0.03)


def test_gaussian_oracle_log_prob(gaussian3, tol):
    mean, cov = gaussian3
    oracle = GaussianOracle(mean, cov)
    x = torch.randn(7, 3, dtype=mean.dtype, device=mean.device) * 3
    expected = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(oracle.log_prob(x), expected, **tol)


def test_gaussian_oracle_validation(dtype):
    with pytest.raises(ValueError, match="cov must be"):
        GaussianOracle(torch.zeros(3, dtype=dtype), torch.eye(2, dtype=dtype))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianOracle(torch.zeros(2, dtype=dtype), torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=dtype))


def test_gaussian_oracle_is_a_denoiser(gaussian3, tol):
    """The oracle predicts every target a Denoiser does: its score is the exact marginal score
    ∇ log N(z; αμ, α²Σ + σ²I) = −(α²Σ + σ²I)⁻¹(z − αμ), and ε̂ = −σ ŝ."""
    mean, cov = gaussian3
    oracle = GaussianOracle(mean, cov)
    z = torch.randn(6, 3, dtype=mean.dtype, device=mean.device)
    gamma = torch.linspace(-4.0, 3.0, 6, dtype=mean.dtype, device=mean.device)
    a2, s2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
    eye = torch.eye(3, dtype=mean.dtype, device=mean.device)
    exact = torch.stack([-torch.linalg.solve(a2[i] * cov + s2[i] * eye, z[i] - a2[i].sqrt() * mean) for i in range(6)])
    torch.testing.assert_close(oracle.score(z, gamma), exact, **tol)
    torch.testing.assert_close(oracle.eps_hat(z, gamma), -s2.sqrt()[:, None] * exact, **tol)
    assert not oracle.needs_dgamma and oracle.parameterization == "x"
