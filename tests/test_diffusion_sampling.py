"""DDIM sampling through composed denoisers (docs/training.md): oracle exactness, classifier-free guidance, fixed channels
(segmentation / anatomy control), super-resolution conditioning, seeding, the progress bar and argument errors.

A small fake network stands in for scripts/networks: it honours the contract
``network(x, timesteps, context=None, drop_context=None) -> x0`` and records the batch size of every call."""

import pytest
import torch
from monai.inferers import DiffusionInferer
from torch import nn

from scripts.conventions import TEXT_TOKENS
from scripts.diffusion import (
    ClassifierFreeGuidance,
    ContinuousDDIMScheduler,
    FixedChannels,
    NetworkDenoiser,
    SuperResolutionDenoiser,
    ddim_sample_loop,
    sample_ddim,
    upsample_nearest,
)
from scripts.inference.pipeline import MedSynPipeline

SHAPE = (2, 4, 4, 8, 8)
HIDDEN = 8


class FakeTextNet(nn.Module):
    """x̂0 depends on x_t, the time and the text; None or dropped context means the learned null embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.null = nn.Parameter(torch.full((TEXT_TOKENS, HIDDEN), -0.3))
        self.calls: list[int] = []

    def forward(self, x, timesteps, context=None, drop_context=None):
        self.calls.append(x.shape[0])
        b = x.shape[0]
        null = self.null.expand(b, -1, -1)
        context = null if context is None else context
        if drop_context is not None:
            context = torch.where(drop_context.view(b, 1, 1), null, context)
        shift = context.mean(dim=(1, 2)).view(b, 1, 1, 1, 1)
        return torch.tanh(0.8 * x + shift + timesteps.view(b, 1, 1, 1, 1) / 2000)


class FakeSRNet(nn.Module):
    """8 → 4 channels: condition first, noisy volume second; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, timesteps):
        self.inputs.append(x)
        condition, x_t = x[:, :4], x[:, 4:]
        return torch.tanh(condition + 0.1 * x_t)


@pytest.fixture
def context():
    return torch.randn(SHAPE[0], TEXT_TOKENS, HIDDEN, generator=torch.Generator().manual_seed(5))


def test_perfect_oracle_is_reproduced_exactly_along_the_ddim_path():
    """With x̂0 always right, DDIM keeps the starting noise direction: x_t = add_noise(x0, eps, t) at every step."""
    target = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    scheduler = ContinuousDDIMScheduler()
    path = []
    out = ddim_sample_loop(lambda x_t, timesteps: target, noise, 10, scheduler, progress=False, callback=path.append)
    assert torch.equal(out, target)
    assert [int(step.next_timestep) for step in path] == list(range(900, -1, -100))
    # x_1 is pure noise, not add_noise(target, noise, 1000) (alpha_bar(1) = 1e-4 > 0): its eps direction is
    ab = scheduler.alpha_bar(1000.0)
    eps = (noise - ab.sqrt() * target) / (1 - ab).sqrt()
    for step in path[:-1]:
        expected = scheduler.add_noise(target, eps, step.next_timestep.expand(SHAPE[0]))
        torch.testing.assert_close(step.sample, expected, atol=1e-5, rtol=0)


def test_denoiser_receives_batched_float_timesteps_on_the_grid():
    seen = []

    def denoise(x_t, timesteps):
        seen.append(timesteps.clone())
        return torch.zeros_like(x_t)

    sample_ddim(denoise, SHAPE, num_inference_steps=50, generator=0, progress=False)
    assert len(seen) == 50
    assert all(t.shape == (SHAPE[0],) and t.dtype == torch.float32 for t in seen)
    assert [t[0].item() for t in seen] == [1000.0 - 20 * i for i in range(50)]


def test_official_final_step_evaluates_once_more_at_zero():
    """set_alpha_to_one=False: the step to t = 0 keeps alpha_bar(0) and the x̂0 of an extra evaluation is returned."""
    seen = []

    def denoise(x_t, timesteps):
        seen.append((timesteps[0].item(), x_t))
        return torch.tanh(x_t + timesteps.view(-1, 1, 1, 1, 1) / 1000)

    scheduler = ContinuousDDIMScheduler(set_alpha_to_one=False)
    out = sample_ddim(denoise, SHAPE, num_inference_steps=5, generator=0, scheduler=scheduler, progress=False)
    assert [t for t, _ in seen] == [1000.0, 800.0, 600.0, 400.0, 200.0, 0.0]
    last_x = seen[-1][1]
    assert torch.equal(out, torch.tanh(last_x))  # the x̂0 of the evaluation at t = 0
    # the input of that evaluation is the DDIM update 200 → 0 with alpha_bar(0) ≈ 0.99985 (not x̂0 itself)
    x_200 = seen[-2][1]
    expected = scheduler.step(torch.tanh(x_200 + 0.2), 200.0, x_200, 0.0).prev_sample
    assert torch.equal(last_x, expected) and not torch.equal(last_x, torch.tanh(x_200 + 0.2))


def test_monai_diffusion_inferer_can_drive_the_scheduler(context):
    """MONAI's DiffusionInferer.sample loop (scheduler.timesteps + step without next timestep) gives our samples."""
    net, noise = FakeTextNet(), torch.randn(1, *SHAPE[1:])
    scheduler = ContinuousDDIMScheduler()
    scheduler.set_timesteps(5)
    ours = ddim_sample_loop(NetworkDenoiser(net, context[:1]), noise, 5, ContinuousDDIMScheduler(), progress=False)
    monai = DiffusionInferer(scheduler).sample(noise, net, scheduler, conditioning=context[:1], verbose=False)
    torch.testing.assert_close(monai, ours)


def test_guidance_scale_one_is_the_conditional_prediction_with_one_call_per_step(context):
    net = FakeTextNet()
    x, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 500.0)
    assert torch.equal(ClassifierFreeGuidance(net, context, 1.0)(x, t), NetworkDenoiser(net, context)(x, t))
    net.calls.clear()
    sample_ddim(ClassifierFreeGuidance(net, context, 1.0), SHAPE, num_inference_steps=5, generator=0, progress=False)
    assert net.calls == [SHAPE[0]] * 5  # the null branch is never evaluated


@pytest.mark.parametrize("batch_branches, calls", [(True, [2 * SHAPE[0]]), (False, [SHAPE[0], SHAPE[0]])])
def test_guidance_follows_the_formula(context, batch_branches, calls):
    net = FakeTextNet()
    x, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 700.0)
    cond, null = net(x, t, context=context), net(x, t)
    assert not torch.allclose(cond, null)
    net.calls.clear()
    guided = ClassifierFreeGuidance(net, context, 3.0, batch_branches=batch_branches)(x, t)
    assert net.calls == calls
    torch.testing.assert_close(guided, null + 3.0 * (cond - null), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch_guidance, calls", [(True, [2]), (False, [1, 1])])
def test_pipeline_batches_the_guidance_branches_unless_told_not_to(context, batch_guidance, calls):
    net = FakeTextNet()
    pipeline = MedSynPipeline(
        net,
        text_encoder=lambda texts: context[:1],
        lowres_size=SHAPE[2:],
        lowres_steps=3,
        guidance_scale=3.0,
        batch_guidance=batch_guidance,
        device="cpu",
        progress=False,
    )
    sample = pipeline("a report", seed=0).lowres
    assert net.calls == calls * 3
    expected = MedSynPipeline(
        FakeTextNet(),
        text_encoder=lambda texts: context[:1],
        lowres_size=SHAPE[2:],
        lowres_steps=3,
        guidance_scale=3.0,
        device="cpu",
        progress=False,
    )("a report", seed=0).lowres
    torch.testing.assert_close(sample, expected, atol=1e-6, rtol=0)


def test_guidance_scale_zero_is_the_null_prediction(context):
    net = FakeTextNet()
    x, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 300.0)
    assert torch.equal(ClassifierFreeGuidance(net, context, 0.0)(x, t), net(x, t))


def test_context_of_batch_one_is_shared(context):
    net = FakeTextNet()
    x, t = torch.randn(SHAPE), torch.full((SHAPE[0],), 300.0)
    shared = NetworkDenoiser(net, context[:1])(x, t)
    assert torch.equal(shared, net(x, t, context=context[:1].expand(SHAPE[0], -1, -1)))


def test_fixed_ct_segmentation_keeps_the_ct_exactly(context):
    ct = torch.rand(1, 1, *SHAPE[2:], generator=torch.Generator().manual_seed(2)) * 2 - 1
    denoise = FixedChannels(ClassifierFreeGuidance(FakeTextNet(), context, 2.0), ct, channels=["ct"])
    out = sample_ddim(denoise, SHAPE, num_inference_steps=8, generator=3, progress=False)
    assert torch.equal(out[:, :1], ct.expand(SHAPE[0], -1, -1, -1, -1))
    assert not torch.equal(out[:, 1], ct[:, 0].expand(SHAPE[0], -1, -1, -1))  # the masks are generated


def test_fixed_masks_anatomy_control_keeps_the_masks_exactly(context):
    masks = torch.where(torch.rand(SHAPE[0], 3, *SHAPE[2:]) > 0.5, 1.0, -1.0)
    denoise = FixedChannels(NetworkDenoiser(FakeTextNet(), context), masks, channels=["lobe", "airway", 3])
    out = sample_ddim(denoise, SHAPE, num_inference_steps=4, generator=3, progress=False)
    assert torch.equal(out[:, 1:], masks)
    assert out[:, 0].abs().max() <= 1


def test_super_resolution_concatenates_the_condition_first():
    net = FakeSRNet()
    lowres = torch.rand(1, 4, 1, 2, 2) * 2 - 1
    condition = upsample_nearest(lowres)
    out = sample_ddim(SuperResolutionDenoiser(net, condition), (2, 4, 4, 8, 8), 3, generator=0, progress=False)
    assert out.shape == (2, 4, 4, 8, 8)
    assert len(net.inputs) == 3 and all(x.shape == (2, 8, 4, 8, 8) for x in net.inputs)
    assert torch.equal(net.inputs[0][:, :4], condition.expand(2, -1, -1, -1, -1))
    with pytest.raises(ValueError, match="upsample the low-res volume"):
        SuperResolutionDenoiser(net, lowres)(torch.zeros(2, 4, 4, 8, 8), torch.zeros(2))


def test_same_seed_same_samples(context):
    denoise = ClassifierFreeGuidance(FakeTextNet(), context, 1.5)
    first = sample_ddim(denoise, SHAPE, num_inference_steps=4, generator=11, progress=False)
    again = sample_ddim(denoise, SHAPE, num_inference_steps=4, generator=11, progress=False)
    from_generator = sample_ddim(
        denoise, SHAPE, num_inference_steps=4, generator=torch.Generator().manual_seed(11), progress=False
    )
    other = sample_ddim(denoise, SHAPE, num_inference_steps=4, generator=12, progress=False)
    assert torch.equal(first, again) and torch.equal(first, from_generator)
    assert not torch.equal(first, other)
    assert not torch.equal(first[0], first[1])  # samples in one batch differ


def test_progress_bar_can_be_turned_off(capsys):
    denoise = NetworkDenoiser(FakeTextNet())
    sample_ddim(denoise, SHAPE, num_inference_steps=2, generator=0, progress=False)
    assert "DDIM" not in capsys.readouterr().err
    sample_ddim(denoise, SHAPE, num_inference_steps=2, generator=0, progress=True)
    assert "DDIM" in capsys.readouterr().err


def test_any_number_of_steps():
    out = sample_ddim(NetworkDenoiser(FakeTextNet()), SHAPE, num_inference_steps=1, generator=0, progress=False)
    assert out.shape == SHAPE and out.abs().max() <= 1


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda net, ctx: ClassifierFreeGuidance(net, ctx, -0.5), "guidance_scale must be >= 0"),
        (lambda net, ctx: FixedChannels(net, torch.zeros(1, 2, 4, 8, 8), ["ct"]), "values must have shape"),
        (lambda net, ctx: FixedChannels(net, torch.zeros(1, 1, 4, 8, 8), ["liver"]), "unknown channel 'liver'"),
        (lambda net, ctx: FixedChannels(net, torch.zeros(1, 2, 4, 8, 8), ["ct", 0]), "repeat a channel"),
        (lambda net, ctx: FixedChannels(net, torch.full((1, 1, 4, 8, 8), 2.0), ["ct"]), "must lie in \\[-1, 1\\]"),
        (lambda net, ctx: sample_ddim(NetworkDenoiser(net), SHAPE, 0, progress=False), "num_inference_steps"),
    ],
)
def test_argument_errors(context, build, message):
    with pytest.raises(ValueError, match=message):
        build(FakeTextNet(), context)


def test_fixed_values_must_match_the_sample_at_call_time():
    net = NetworkDenoiser(FakeTextNet())
    x, t = torch.zeros(SHAPE), torch.zeros(SHAPE[0])
    with pytest.raises(ValueError, match="spatial shape"):
        FixedChannels(net, torch.zeros(1, 1, 4, 4, 4), ["ct"])(x, t)
    with pytest.raises(ValueError, match="out of range for 4 channels"):
        FixedChannels(net, torch.zeros(1, 1, *SHAPE[2:]), [5])(x, t)
    with pytest.raises(ValueError, match="batch size 3"):
        FixedChannels(net, torch.zeros(3, 1, *SHAPE[2:]), [0])(x, t)
