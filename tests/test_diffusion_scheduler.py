"""The continuous cosine schedule and the DDIM scheduler (docs/training.md): exact values, round trips, the time grid,
agreement with MONAI's own DDIM step for x0-predicting networks, and one-line argument errors."""

import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from scripts.diffusion import ContinuousDDIMScheduler, cosine_alpha_bar, get_schedule


def formula(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def test_cosine_alpha_bar_known_values():
    ab = cosine_alpha_bar(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    # t = 0: the formula (≈ 0.999845) lies just below the upper clamp 1 - 1e-4, so the clamp does not act
    assert ab[0].item() == pytest.approx(formula(0.0), abs=1e-12)
    assert 1 - 2e-4 < ab[0].item() <= 1 - 1e-4
    assert ab[1].item() == pytest.approx(formula(0.5), abs=1e-12)
    assert ab[2].item() == 1e-4  # cos(π/2)² ≈ 0 is clamped up
    # the upper clamp acts only before t = 0
    assert cosine_alpha_bar(torch.tensor([-0.008], dtype=torch.float64)).item() == 1 - 1e-4


def test_scheduler_alpha_bar_takes_network_units():
    scheduler = ContinuousDDIMScheduler()
    assert scheduler.alpha_bar(torch.tensor(500.0)).item() == pytest.approx(formula(0.5), abs=1e-6)
    assert scheduler.alpha_bar(1000.0).item() == pytest.approx(1e-4, rel=1e-5)


def test_add_noise_round_trip_given_the_noise():
    scheduler = ContinuousDDIMScheduler()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 4, 4, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.tensor([0.0, 500.0, 990.0])
    x_t = scheduler.add_noise(x0, noise, timesteps)
    ab = scheduler.alpha_bar(timesteps).view(3, 1, 1, 1, 1)
    torch.testing.assert_close((x_t - (1 - ab).sqrt() * noise) / ab.sqrt(), x0, atol=2e-5, rtol=0)
    # near t = 0 the volume is almost clean, near t = 1 almost pure noise
    assert (x_t[0] - x0[0]).abs().max() < 0.05
    torch.testing.assert_close(x_t[2], noise[2], atol=0.05, rtol=0)


def test_time_grid_for_50_steps():
    scheduler = ContinuousDDIMScheduler()
    scheduler.set_timesteps(50)
    expected = torch.arange(1000, -1, -20, dtype=torch.float32)
    assert scheduler.time_grid.tolist() == expected.tolist()  # 1000, 980, ..., 20, 0 exactly
    # the network is evaluated at every grid point but the last, as MONAI's `timesteps` lists evaluation points
    assert scheduler.timesteps.tolist() == expected[:-1].tolist()
    assert scheduler.num_inference_steps == 50
    scheduler.set_timesteps(3)
    torch.testing.assert_close(scheduler.time_grid, torch.tensor([1000.0, 2000 / 3, 1000 / 3, 0.0]))


def test_step_matches_monai_ddim_for_x0_prediction():
    """Same update as MONAI's DDIMScheduler (prediction_type "sample", eta 0) fed our alpha_bar table.

    x̂0 stays inside [-1, 1] here: MONAI derives the noise direction from the unclipped x̂0, MedSyn (and we) from the
    clipped one, so the two differ where clipping acts."""
    ours = ContinuousDDIMScheduler()
    monai = DDIMScheduler(num_train_timesteps=1000, prediction_type="sample", clip_sample=True)
    monai.alphas_cumprod = ours.alpha_bar(torch.arange(1000, dtype=torch.float64)).float()
    monai.set_timesteps(50)
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 3, 3, 3, generator=generator)
    x0_hat = torch.rand(sample.shape, generator=generator) * 2 - 1
    expected, expected_x0 = monai.step(x0_hat, 500, sample)  # MONAI steps 500 → 480
    prev, pred_x0 = ours.step(x0_hat, 500.0, sample, 480.0)
    torch.testing.assert_close(pred_x0, expected_x0)
    torch.testing.assert_close(prev, expected, atol=1e-5, rtol=1e-5)


def test_step_to_zero_returns_the_clipped_prediction_exactly():
    scheduler = ContinuousDDIMScheduler()
    sample = torch.randn(2, 4, 2, 2, 2)
    x0_hat = torch.linspace(-2, 2, sample.numel()).view(sample.shape)
    out = scheduler.step(x0_hat, 20.0, sample, 0.0)
    assert torch.equal(out.prev_sample, x0_hat.clamp(-1, 1))
    assert torch.equal(out.pred_original_sample, x0_hat.clamp(-1, 1))


def test_step_reads_the_next_timestep_off_the_grid():
    scheduler = ContinuousDDIMScheduler()
    scheduler.set_timesteps(4)  # 1000, 750, 500, 250, 0
    sample, x0_hat = torch.randn(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
    assert torch.equal(scheduler.step(x0_hat, 750.0, sample)[0], scheduler.step(x0_hat, 750.0, sample, 500.0)[0])
    assert torch.equal(scheduler.step(x0_hat, torch.tensor(250.0), sample).prev_sample, x0_hat)
    with pytest.raises(ValueError, match="not on the inference grid"):
        scheduler.step(x0_hat, 600.0, sample)


def test_step_accepts_per_sample_timesteps():
    scheduler = ContinuousDDIMScheduler()
    sample, x0_hat = torch.randn(2, 1, 2, 2, 2), torch.rand(2, 1, 2, 2, 2) - 0.5
    both = scheduler.step(x0_hat, torch.tensor([800.0, 300.0]), sample, torch.tensor([600.0, 0.0])).prev_sample
    assert torch.equal(both[:1], scheduler.step(x0_hat[:1], 800.0, sample[:1], 600.0).prev_sample)
    assert torch.equal(both[1:], x0_hat[1:])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.set_timesteps(0), "num_inference_steps must be an integer >= 1"),
        (lambda s: s.set_timesteps(2.5), "num_inference_steps must be an integer >= 1"),
        (lambda s: s.add_noise(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2), torch.zeros(3)), "shape \\(B,\\) with B=2"),
        (lambda s: s.add_noise(torch.zeros(2, 1, 2), torch.zeros(2, 1, 3), torch.zeros(2)), "noise shape"),
        (lambda s: s.step(torch.zeros(1, 1, 2), 1000.0, torch.zeros(1, 1, 2)), "call set_timesteps"),
        (lambda s: s.step(torch.zeros(1, 1, 2), 1000.0, torch.zeros(1, 2, 2), 0.0), "model_output"),
    ],
)
def test_scheduler_argument_errors(call, message):
    scheduler = ContinuousDDIMScheduler()
    with pytest.raises((ValueError, RuntimeError), match=message):
        call(scheduler)


def test_scheduler_constructor_errors():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        ContinuousDDIMScheduler(schedule="linear")
    with pytest.raises(ValueError, match="num_train_timesteps must be positive"):
        ContinuousDDIMScheduler(num_train_timesteps=0)
    with pytest.raises(ValueError, match="clip_sample_min must be below"):
        ContinuousDDIMScheduler(clip_sample_min=1.0, clip_sample_max=-1.0)
    assert get_schedule("cosine") is cosine_alpha_bar
