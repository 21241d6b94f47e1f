"""Training-side pieces (docs/training.md): the super-resolution condition and the prepare-batch classes, alone and
driving MONAI's SupervisedTrainer with a tiny network that honours the network contract."""

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import DiffusionPrepareBatch
from torch import nn

from scripts.conventions import TEXT_TOKENS
from scripts.diffusion import (
    ContinuousDDIMScheduler,
    LowResPrepareBatch,
    MaskedMSELoss,
    SuperResolutionPrepareBatch,
    degrade_for_super_resolution,
    downsample_nearest,
    upsample_nearest,
)


def volume(*shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- conditioning ----------------------------------------------------------------------------------------------


def test_nearest_down_and_up_sampling():
    x = volume(2, 4, 8, 8, 12)
    low = downsample_nearest(x)
    assert low.shape == (2, 4, 2, 2, 3)
    assert torch.equal(low, x[:, :, ::4, ::4, ::4])
    up = upsample_nearest(low)
    assert up.shape == x.shape
    assert torch.equal(up[:, :, 5, 2, 11], low[:, :, 1, 0, 2])  # every voxel of a 4³ block is its corner's
    assert torch.equal(downsample_nearest(up), low)
    with pytest.raises(ValueError, match="multiples of factor 4"):
        downsample_nearest(volume(1, 4, 8, 8, 10))
    with pytest.raises(ValueError, match="factor must be an integer >= 1"):
        upsample_nearest(low, 0)


def test_degraded_condition_mixes_in_noise_by_level():
    x = volume(2, 4, 8, 8, 8)
    plain = upsample_nearest(downsample_nearest(x))
    cond = degrade_for_super_resolution(x, noise_level=torch.tensor([0.0, 0.25]), generator=torch.Generator())
    assert torch.equal(cond[0], plain[0])  # a = 0: exactly the nearest ↓↑ volume
    noise = (cond[1] - 0.75 * plain[1]) / 0.25
    assert abs(noise.mean().item()) < 0.15 and abs(noise.std().item() - 1) < 0.15
    assert torch.equal(degrade_for_super_resolution(x, max_noise=0.0), plain)
    with pytest.raises(ValueError, match="max_noise must be >= 0"):
        degrade_for_super_resolution(x, max_noise=-0.1)


def test_degraded_condition_is_seedable_and_bounded_by_max_noise():
    x = torch.zeros(64, 1, 4, 4, 4)  # a zero volume shows the noise alone: cond = a * N(0, 1)
    first = degrade_for_super_resolution(x, generator=torch.Generator().manual_seed(4))
    again = degrade_for_super_resolution(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    per_sample_std = first.flatten(1).std(dim=1)
    assert per_sample_std.max() < 0.4 * 1.6 and per_sample_std.min() < 0.1  # a ~ U(0, 0.4) per sample


# --- prepare batch ---------------------------------------------------------------------------------------------


def test_low_res_prepare_batch_outputs():
    batch = {"image": volume(3, 4, 4, 8, 8), "context": volume(3, TEXT_TOKENS, 16, seed=1)}
    prepare = LowResPrepareBatch(generator=0)
    assert isinstance(prepare, DiffusionPrepareBatch)
    x_t, target, args, kwargs = prepare(batch, torch.device("cpu"), False)
    assert x_t.shape == target.shape == (3, 4, 4, 8, 8)
    assert torch.equal(target, batch["image"])  # x0 prediction: the target is the clean volume
    (timesteps,) = args
    assert timesteps.shape == (3,) and timesteps.dtype == torch.float32
    assert ((timesteps >= 0) & (timesteps <= 1000)).all()
    assert set(kwargs) == {"context", "drop_context"}
    assert torch.equal(kwargs["context"], batch["context"])
    assert kwargs["drop_context"].shape == (3,) and kwargs["drop_context"].dtype == torch.bool


def test_low_res_prepare_batch_noises_with_the_schedule():
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: the eps recovered from the returned times is standard normal."""
    x0 = volume(16, 4, 8, 8, 8)
    x_t, _, (timesteps,), _ = LowResPrepareBatch(context_key=None, generator=1)({"image": x0})
    ab = ContinuousDDIMScheduler().alpha_bar(timesteps).view(-1, 1, 1, 1, 1)
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    assert abs(eps.mean().item()) < 0.03 and abs(eps.std().item() - 1) < 0.03
    assert timesteps.std() > 100  # times spread over [0, 1000], one per sample


def test_context_drop_rate_is_about_one_in_ten():
    batch = {"image": torch.zeros(5000, 1, 1, 1, 1), "context": torch.zeros(5000, 2, 2)}
    drop = LowResPrepareBatch(generator=2)(batch)[3]["drop_context"]
    assert 0.085 < drop.float().mean().item() < 0.115
    _, _, _, kwargs = LowResPrepareBatch(drop_prob=0.0)(batch)
    assert set(kwargs) == {"context"}  # dropout disabled: the network gets its context unchanged


def test_prepare_batch_keys_are_configurable_and_checked():
    batch = {"ct": volume(2, 4, 4, 8, 8), "report": volume(2, TEXT_TOKENS, 8)}
    _, target, _, kwargs = LowResPrepareBatch(image_key="ct", context_key="report")(batch)
    assert torch.equal(target, batch["ct"]) and torch.equal(kwargs["context"], batch["report"])
    assert LowResPrepareBatch(image_key="ct", context_key=None)(batch)[3] == {}
    with pytest.raises(KeyError, match="batch has no key 'image'"):
        LowResPrepareBatch()(batch)
    with pytest.raises(ValueError, match="drop_prob must be in \\[0, 1\\]"):
        LowResPrepareBatch(drop_prob=1.5)


def test_prepare_batch_is_reproducible_with_a_seed():
    batch = {"image": volume(2, 4, 4, 8, 8), "context": volume(2, TEXT_TOKENS, 8)}
    first, again = LowResPrepareBatch(generator=3)(batch), LowResPrepareBatch(generator=3)(batch)
    assert torch.equal(first[0], again[0]) and torch.equal(first[2][0], again[2][0])


def test_super_resolution_prepare_batch_outputs():
    x0 = volume(2, 4, 8, 16, 16)
    inputs, target, (timesteps,), kwargs = SuperResolutionPrepareBatch(max_noise=0.0, generator=0)({"image": x0})
    assert inputs.shape == (2, 8, 8, 16, 16) and kwargs == {} and timesteps.shape == (2,)
    assert torch.equal(target, x0)
    assert torch.equal(inputs[:, :4], upsample_nearest(downsample_nearest(x0)))  # condition first, a = 0
    ab = ContinuousDDIMScheduler().alpha_bar(timesteps).view(-1, 1, 1, 1, 1)
    eps = (inputs[:, 4:] - ab.sqrt() * x0) / (1 - ab).sqrt()
    assert abs(eps.std().item() - 1) < 0.05  # noisy volume second
    noisy = SuperResolutionPrepareBatch(generator=0)({"image": x0})[0]
    assert not torch.equal(noisy[:, :4], inputs[:, :4])  # default: augmented condition
    with pytest.raises(ValueError, match="multiples of factor 4"):
        SuperResolutionPrepareBatch()({"image": volume(1, 4, 8, 18, 16)})


# --- with MONAI's SupervisedTrainer -----------------------------------------------------------------------------


class TinyTextNet(nn.Module):
    """Trainable stand-in for the low-res network: a conv plus a time and text bias; records its kwargs."""

    def __init__(self, channels: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, 4, 3, padding=1)
        self.text = nn.Linear(hidden, 4)
        self.null = nn.Parameter(torch.zeros(TEXT_TOKENS, hidden))
        self.seen: list[dict] = []

    def forward(self, x, timesteps, context=None, drop_context=None):
        self.seen.append({"timesteps": timesteps, "context": context, "drop_context": drop_context})
        b = x.shape[0]
        null = self.null.expand(b, -1, -1)
        context = null if context is None else context
        if drop_context is not None:
            context = torch.where(drop_context.view(b, 1, 1), null, context)
        bias = self.text(context.mean(1)) + timesteps.view(b, 1) / 1000
        return self.conv(x) + bias.view(b, 4, 1, 1, 1)


@pytest.mark.parametrize("stage", ["lowres", "superres"])
def test_supervised_trainer_runs_with_the_prepare_batch(stage):
    torch.manual_seed(0)
    if stage == "lowres":
        net, prepare = TinyTextNet(), LowResPrepareBatch(generator=0)
        batches = [{"image": volume(2, 4, 4, 8, 8, seed=i), "context": volume(2, TEXT_TOKENS, 8)} for i in range(2)]
    else:
        net, prepare = TinyTextNet(channels=8), SuperResolutionPrepareBatch(generator=0)
        batches = [{"image": volume(2, 4, 4, 8, 8, seed=i)} for i in range(2)]
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3),
        loss_function=nn.MSELoss(),
        prepare_batch=prepare,
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output["loss"]))
    trainer.run()
    assert len(losses) == 2 and all(torch.isfinite(loss) for loss in losses)
    assert net.seen[0]["timesteps"].shape == (2,)
    if stage == "lowres":
        assert net.seen[0]["context"].shape == (2, TEXT_TOKENS, 8) and net.seen[0]["drop_context"].shape == (2,)
    else:
        assert net.seen[0]["context"] is None


# --- loss ------------------------------------------------------------------------------------------------------


def test_masked_mse_is_mse_over_present_channels():
    loss = MaskedMSELoss()
    pred, x0 = volume(2, 4, 4, 4, 4, seed=1), volume(2, 4, 4, 4, 4, seed=2)
    torch.testing.assert_close(loss(pred, x0), torch.nn.functional.mse_loss(pred, x0))
    torch.testing.assert_close(loss(pred, (x0, torch.ones(2, 4))), torch.nn.functional.mse_loss(pred, x0))
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1]])
    expected = torch.cat([(pred - x0)[0, :1].flatten(), (pred - x0)[1].flatten()]).square().mean()
    torch.testing.assert_close(loss(pred, (x0, mask)), expected)
    changed = pred.clone()
    changed[0, 1:] += 5  # a missing channel's prediction does not count
    torch.testing.assert_close(loss(changed, (x0, mask)), expected)
    assert MaskedMSELoss.batch_size((x0, mask)) == 2 and MaskedMSELoss.batch_size(x0) == 2
    with pytest.raises(ValueError, match=r"channel_mask must have shape \(B, C\)"):
        loss(pred, (x0, torch.ones(2, 3)))
    with pytest.raises(ValueError, match="every channel"):
        loss(pred, (x0, torch.zeros(2, 4)))


def test_prepare_batches_pass_the_channel_mask_with_the_target():
    batch = {"image": volume(2, 4, 8, 8, 8), "context": torch.zeros(2, TEXT_TOKENS, 8), "mask": torch.ones(2, 4)}
    _, target, _, _ = LowResPrepareBatch(channel_mask_key="mask", generator=0)(batch)
    assert torch.equal(target[0], batch["image"]) and torch.equal(target[1], batch["mask"])
    _, target, _, _ = SuperResolutionPrepareBatch(channel_mask_key="mask", generator=0)(batch)
    assert torch.equal(target[0], batch["image"]) and torch.equal(target[1], batch["mask"])
    _, target, _, _ = LowResPrepareBatch(generator=0)(batch)
    assert torch.equal(target, batch["image"])
    with pytest.raises(KeyError, match="no key 'channel_mask'"):
        LowResPrepareBatch(channel_mask_key="channel_mask")(batch)


def test_channel_weights_weigh_each_channels_mean_squared_error():
    pred, x0 = volume(2, 4, 4, 4, 4, seed=1), volume(2, 4, 4, 4, 4, seed=2)
    per_channel = (pred - x0).square().mean(dim=(0, 2, 3, 4))
    weights = torch.tensor([1.0, 1.0, 20.0, 10.0])
    loss = MaskedMSELoss(channel_weights=weights.tolist())
    torch.testing.assert_close(loss(pred, x0), (weights * per_channel).sum() / weights.sum())
    torch.testing.assert_close(MaskedMSELoss([1, 1, 1, 1])(pred, x0), torch.nn.functional.mse_loss(pred, x0))
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])  # sample 0 has no airway or vessel maps
    weight = mask * weights
    expected = ((pred - x0).square() * weight[:, :, None, None, None]).sum() / (weight.sum() * 64)
    torch.testing.assert_close(loss(pred, (x0, mask)), expected)
    with pytest.raises(ValueError, match="3 weights, the prediction 4 channels"):
        MaskedMSELoss([1, 1, 1])(pred, x0)
    for bad in ([1, -1, 1, 1], [0, 0, 0, 0], [1, float("nan"), 1, 1]):
        with pytest.raises(ValueError, match="channel_weights must be one finite weight >= 0 per channel"):
            MaskedMSELoss(bad)
    with pytest.raises(ValueError, match="or weighs 0"):
        MaskedMSELoss([1, 1, 0, 0])(pred, (x0, torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]])))
