"""DPM-Solver++(2M) on the continuous cosine schedule: the exact probability-flow ODE of Gaussian data, the order of
convergence against DDIM, DDIM's step as its first step, and the sampling loop's fixed channels and guidance."""

import math

import pytest
import torch

from scripts.conventions import MEDSYN_OFFICIAL
from scripts.diffusion import (
    ClassifierFreeGuidance,
    ContinuousDDIMScheduler,
    ContinuousDPMSolverScheduler,
    FixedChannels,
    ddim_sample_loop,
    get_scheduler,
)

SCALE = 0.5  # standard deviation of the Gaussian "data"


def _gaussian_denoiser(scheduler):
    """The exact x̂0 = E[x0 | x_t] for x0 ~ N(0, SCALE²): alpha SCALE² / (alpha² SCALE² + sigma²) x_t."""

    def denoise(x, timesteps):
        alpha_bar = scheduler.alpha_bar(timesteps).view(-1, *([1] * (x.ndim - 1))).to(torch.float64)
        return (alpha_bar.sqrt() * SCALE**2 / (alpha_bar * SCALE**2 + 1 - alpha_bar) * x).to(x.dtype)

    return denoise


def _ode_error(scheduler_class, steps, t_end=100.0):
    """Largest difference from the exact ODE solution after ``steps`` steps from t = 1000 to ``t_end``: along the
    probability-flow ODE of Gaussian data, x_t / sqrt(alpha_bar SCALE² + 1 - alpha_bar) is constant."""
    scheduler = scheduler_class(clip_sample=False)
    scheduler.set_timesteps(steps)  # clears the solver's history
    x1 = torch.randn(4, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.linspace(1000.0, t_end, steps + 1, dtype=torch.float64)
    x, denoise = x1, _gaussian_denoiser(scheduler)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = scheduler.step(denoise(x, t.expand(len(x))), t, x, t_next).prev_sample

    def spread(t):
        alpha_bar = scheduler.alpha_bar(t).to(torch.float64)
        return math.sqrt(float(alpha_bar * SCALE**2 + 1 - alpha_bar))

    exact = x1 * spread(grid[-1]) / spread(grid[0])
    return float((x - exact).abs().max())


def test_solves_the_gaussian_ode_to_second_order_where_ddim_is_first_order():
    ddim = [_ode_error(ContinuousDDIMScheduler, n) for n in (20, 40, 80)]
    dpm = [_ode_error(ContinuousDPMSolverScheduler, n) for n in (20, 40, 80)]
    assert all(d < s / 10 for d, s in zip(dpm, ddim))  # far closer with the same network evaluations
    assert ddim[0] / ddim[1] == pytest.approx(2.0, rel=0.1) and ddim[1] / ddim[2] == pytest.approx(2.0, rel=0.1)
    assert dpm[0] / dpm[1] > 3.0 and dpm[1] / dpm[2] > 3.5  # halving the step about quarters the error
    assert _ode_error(ContinuousDPMSolverScheduler, 10) < _ode_error(ContinuousDDIMScheduler, 50)


def test_first_step_is_ddim_and_the_history_is_cleared_by_set_timesteps():
    x = torch.randn(2, 4, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    x0 = torch.rand(2, 4, 6, 6, 6, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ddim, dpm = ContinuousDDIMScheduler(), ContinuousDPMSolverScheduler()
    for scheduler in (ddim, dpm):
        scheduler.set_timesteps(10)
    first = dpm.step(x0, 1000.0, x, 900.0)
    torch.testing.assert_close(first.prev_sample, ddim.step(x0, 1000.0, x, 900.0).prev_sample)
    second = dpm.step(x0 * 0.5, 900.0, first.prev_sample, 800.0)  # uses the history: differs from DDIM's step
    assert not torch.allclose(second.prev_sample, ddim.step(x0 * 0.5, 900.0, first.prev_sample, 800.0).prev_sample)
    dpm.set_timesteps(10)
    torch.testing.assert_close(dpm.step(x0, 1000.0, x, 900.0).prev_sample, first.prev_sample)


def test_loop_converges_to_the_many_step_ddim_result_and_keeps_fixed_channels():
    """Through the sampling loop with a clipping, non-linear denoiser and a fixed channel; a run again gives the same
    result (no state left between runs)."""
    weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(3)) * 0.3

    def network(x, timesteps):
        return torch.tanh(torch.einsum("ij,bj...->bi...", weights, x) * 1.5 + timesteps.view(-1, 1, 1, 1, 1) / 2000)

    fixed = torch.rand(1, 1, 6, 6, 6, generator=torch.Generator().manual_seed(4)) * 2 - 1
    denoise = FixedChannels(network, fixed, ["lobe"])
    noise = torch.randn(2, 4, 6, 6, 6, generator=torch.Generator().manual_seed(5))
    reference = ddim_sample_loop(denoise, noise, 500, ContinuousDDIMScheduler(), progress=False)

    def error(name, steps):
        out = ddim_sample_loop(denoise, noise, steps, get_scheduler(name), progress=False)
        torch.testing.assert_close(out[:, 1:2], fixed.expand(2, -1, -1, -1, -1))  # the fixed channel, exactly
        return float((out - reference).abs().mean())

    dpm = [error("dpmpp_2m", n) for n in (5, 10, 20, 40)]
    assert dpm == sorted(dpm, reverse=True) and dpm[-1] < dpm[0] / 4
    assert error("dpmpp_2m", 10) < error("ddim", 10)
    scheduler = get_scheduler("dpmpp_2m")
    runs = [ddim_sample_loop(denoise, noise, 8, scheduler, progress=False) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1])


def test_guidance_and_official_conventions_work_with_the_solver():
    def network(x, timesteps, context=None, drop_context=None):
        shift = torch.zeros(len(x)) if context is None else context.mean(dim=(1, 2))
        if drop_context is not None:  # the null embedding for these batch items
            shift = torch.where(drop_context, torch.zeros_like(shift), shift)
        return torch.tanh(x * 0.3 + shift.view(-1, 1, 1, 1, 1))

    context = torch.full((1, 3, 2), 0.2)
    noise = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    plain = ddim_sample_loop(ClassifierFreeGuidance(network, context, 1.0), noise, 6, get_scheduler("dpmpp_2m"), False)
    guided = ddim_sample_loop(ClassifierFreeGuidance(network, context, 3.0), noise, 6, get_scheduler("dpmpp_2m"), False)
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided) and guided.abs().max() <= 1
    official = get_scheduler("dpmpp_2m", MEDSYN_OFFICIAL)
    assert isinstance(official, ContinuousDPMSolverScheduler) and official.set_alpha_to_one is False
    official.set_timesteps(5)
    assert len(official.timesteps) == 6  # the official loop's extra evaluation at t = 0
    with pytest.raises(ValueError, match="sampler must be one of ddim, dpmpp_2m"):
        get_scheduler("unipc")


def test_logsnr_grid_has_equal_log_snr_steps_and_exact_ends():
    """The solver's default grid: equal steps in lambda from t = 1 to t = 0 (the clamp of the cosine schedule at
    t = 1 left aside), times decreasing from 1000 to 0 exactly; DDIM keeps the official uniform grid, and either
    scheduler takes either grid."""
    solver = ContinuousDPMSolverScheduler()
    assert solver.timestep_spacing == "logsnr" and ContinuousDDIMScheduler().timestep_spacing == "uniform"
    for steps in (1, 2, 7, 17, 50):
        solver.set_timesteps(steps)
        grid = solver.time_grid
        assert len(grid) == steps + 1 and grid[0] == 1000.0 and grid[-1] == 0.0
        assert bool((grid[1:] < grid[:-1]).all())
        gaps = solver.log_snr(grid.double()).diff()
        torch.testing.assert_close(gaps, torch.full_like(gaps, float(gaps.mean())), rtol=2e-3, atol=0)
    # the last evaluation sits far closer to t = 0 than on the uniform grid: sigma 0.02 rather than 0.10 at 17 steps
    solver.set_timesteps(17)
    uniform = ContinuousDPMSolverScheduler(timestep_spacing="uniform")
    uniform.set_timesteps(17)
    last, last_uniform = ((1 - s.alpha_bar(s.timesteps[-1])).sqrt() for s in (solver, uniform))
    assert float(last) < 0.03 and float(last_uniform) > 0.09
    ddim = ContinuousDDIMScheduler(timestep_spacing="logsnr")
    ddim.set_timesteps(17)
    torch.testing.assert_close(ddim.time_grid, solver.time_grid)
    official = get_scheduler("dpmpp_2m", MEDSYN_OFFICIAL)
    official.set_timesteps(4)
    assert official.timesteps[-1] == 0.0 and len(official.timesteps) == 5  # the extra evaluation at t = 0 kept
    with pytest.raises(ValueError, match="timestep_spacing must be one of uniform, logsnr, got 'karras'"):
        ContinuousDDIMScheduler(timestep_spacing="karras")
