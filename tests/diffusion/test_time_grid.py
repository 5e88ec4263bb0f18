"""The discrete time grid t = i/T stays exact enough in float32 for every accepted T (≤ MAX_T),
and larger T is refused."""

import pytest
import torch

from hlvm.diffusion.schedules import make_schedule
from hlvm.programs.chain import MAX_T, DiffusionChain, check_T


def _mean_weight(schedule, T, dtype):
    """(1/T) Σ_i ½ T expm1(γ(i/T) − γ((i−1)/T)), with t and s formed as the bound forms them."""
    s = schedule.to(dtype)
    t = torch.arange(1, T + 1, dtype=dtype) / T
    return float((0.5 * T * torch.expm1(s.gamma(t) - s.gamma(t - 1.0 / T))).double().mean())


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_float32_grid_is_exact_to_a_thousandth_up_to_max_T(name):
    schedule = make_schedule(name, -13.3, 5.0)
    for T in (1000, MAX_T):
        f32, f64 = _mean_weight(schedule, T, torch.float32), _mean_weight(schedule, T, torch.float64)
        assert abs(f32 / f64 - 1) < 1e-3, (T, f32, f64)
    # the reason for the bound: ten times further, float32 is off by far more
    T = 10 * MAX_T
    f32, f64 = _mean_weight(schedule, T, torch.float32), _mean_weight(schedule, T, torch.float64)
    assert abs(f32 / f64 - 1) > 3e-3


@pytest.mark.parametrize("T", [0, -1, MAX_T + 1, 100_000_000, 2.0, True])
def test_T_outside_the_exact_range_is_refused(T):
    with pytest.raises(ValueError, match=r"T must be an integer in \[1, 100,000\]"):
        check_T(T)
    schedule = make_schedule("linear", -13.3, 5.0)
    from hlvm.programs.likelihoods import GaussianLikelihood

    with pytest.raises(ValueError, match=r"T must be an integer in \[1, 100,000\]"):
        DiffusionChain(torch.nn.Identity(), schedule, GaussianLikelihood((2,)), T=T)


def test_T_inside_the_range_is_accepted():
    for T in (None, 1, MAX_T):
        check_T(T)


@pytest.mark.parametrize("kind", ["uniform", "antithetic", "importance"])
def test_sampled_times_lie_in_the_documented_range(kind):
    """Continuous time: t ∈ [0, 1); discrete: t = i/T, i ∈ {1..T}, so t ∈ (0, 1] — each end reached
    (the importance sampler after its warm-up, with a history that favours the ends)."""
    from hlvm.diffusion.timesteps import TimestepSampler

    g = torch.Generator().manual_seed(0)
    for T in (None, 4):
        sampler = TimestepSampler(kind, T, bins=8, warmup=1)
        if kind == "importance":
            grid = torch.arange(sampler.bins, dtype=torch.float64)
            pos = (grid + 0.5) / sampler.bins if T is None else (grid + 1) / T
            sampler.update(pos, (grid - grid.mean()).abs() + 0.1)  # every bin observed: importance-weighted now
        t, w = sampler(20000, dtype=torch.float64, generator=g)
        assert bool((w > 0).all())
        if T is None:
            assert float(t.min()) >= 0.0 and float(t.max()) < 1.0
            assert float(t.min()) < 1e-3 and float(t.max()) > 1 - 1e-3
        else:
            i = t * T
            torch.testing.assert_close(i, i.round())
            assert set(i.round().long().tolist()) == set(range(1, T + 1))
