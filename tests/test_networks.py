"""The MedSyn denoiser (scripts/networks): presets, forward contract, input validation, text dropping, checkpointing."""

from __future__ import annotations

import pytest
import torch

from scripts.networks import (
    PRESETS,
    MedSynUNet,
    build_network,
    load_network,
    load_state,
    parameter_counts,
    preset_config,
    save_network,
)

TIME = torch.tensor([500.0, 20.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(net: MedSynUNet, batch: int = 2, d: int = 4, hw: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, net.in_channels, d, hw, hw, generator=gen)


def _text(net: MedSynUNet, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, net.text_tokens, net.context_dim, generator=gen)


@pytest.fixture(scope="module")
def lowres() -> MedSynUNet:
    torch.manual_seed(0)
    return build_network("tiny", "lowres").eval()


@pytest.fixture(scope="module")
def sr() -> MedSynUNet:
    torch.manual_seed(0)
    return build_network("tiny", "sr").eval()


def test_paper_parameter_counts_match_the_official_models():
    assert parameter_counts("paper") == {"lowres": 716_215_684, "sr": 54_307_908}


def test_every_preset_builds_both_stages_on_meta():
    for preset in PRESETS:
        counts = parameter_counts(preset)
        assert set(counts) == {"lowres", "sr"} and all(n > 0 for n in counts.values())


def test_unknown_preset_or_stage_lists_the_valid_names():
    with pytest.raises(ValueError, match="paper"):
        build_network("huge", "lowres")
    with pytest.raises(ValueError, match="lowres"):
        build_network("tiny", "midres")


def test_overrides_replace_preset_values():
    net = build_network("tiny", "lowres", context_dim=16, use_checkpointing=True)
    assert net.context_dim == 16 and net.null_context.shape == (1, 192, 16) and net.use_checkpointing


def test_lowres_output_shape_and_depth_is_never_downsampled(lowres):
    x = _inputs(lowres, d=3)  # an odd number of slices works: only H and W are resampled
    with torch.no_grad():
        out = lowres(x, TIME, _text(lowres))
    assert out.shape == (2, 4, 3, 16, 16)
    assert torch.isfinite(out).all()


def test_sr_output_shape(sr):
    with torch.no_grad():
        out = sr(_inputs(sr), TIME)
    assert out.shape == (2, 4, 4, 16, 16)


def test_sr_rejects_text(sr):
    with pytest.raises(ValueError, match="context=None"):
        sr(_inputs(sr), TIME, context=torch.zeros(2, 192, 32))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 4, 4, 12, 16), "multiples of 8"),
        ((2, 4, 4, 16, 20), "multiples of 8"),
        ((2, 3, 4, 16, 16), "in_channels=4"),
        ((2, 4, 16, 16), r"\(B, C, D, H, W\)"),
    ],
)
def test_bad_input_shapes_say_what_to_fix(lowres, shape, match):
    with pytest.raises(ValueError, match=match):
        lowres(torch.zeros(shape), TIME)


def test_bad_timesteps_and_context_shapes(lowres):
    x = _inputs(lowres)
    with pytest.raises(ValueError, match=r"timesteps must have shape \(B,\)"):
        lowres(x, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="context must have shape"):
        lowres(x, TIME, torch.zeros(2, 100, 32))
    with pytest.raises(ValueError, match="drop_context must be a bool tensor"):
        lowres(x, TIME, _text(lowres), drop_context=torch.tensor([1, 0]))


def test_norm_groups_must_divide_widths():
    with pytest.raises(ValueError, match="norm_groups=8 must divide"):
        MedSynUNet(width=12, context_dim=None)


def test_drop_context_replaces_text_by_the_null_embedding(lowres):
    x, text = _inputs(lowres), _text(lowres)
    with torch.no_grad():
        with_text = lowres(x, TIME, text)
        without_text = lowres(x, TIME)  # context=None: the null embedding for the whole batch
        mixed = lowres(x, TIME, text, drop_context=torch.tensor([True, False]))
        explicit_null = lowres(x, TIME, lowres.null_context.expand(2, -1, -1))
    assert not torch.allclose(with_text, without_text, atol=1e-4)  # the text does change the prediction
    torch.testing.assert_close(mixed[0], without_text[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], with_text[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit_null, without_text, atol=1e-5, rtol=0)


def test_samples_do_not_interact(lowres):
    x, text = _inputs(lowres), _text(lowres)
    with torch.no_grad():
        both = lowres(x, TIME, text)
        first = lowres(x[:1], TIME[:1], text[:1])
    torch.testing.assert_close(both[:1], first, atol=1e-4, rtol=0)


def test_shared_bottleneck_attention_is_one_module_with_own_norms():
    net = build_network("tiny", "lowres")
    units = net.bottleneck.units
    assert len(units) == 4 and len({id(u.attn_norm.gain) for u in units}) == 4
    keys = [k for k in net.state_dict() if "to_qkv" in k]
    assert keys == ["bottleneck.self_attn.to_qkv.weight"]


@pytest.mark.parametrize("stage", ["lowres", "sr"])
def test_gradient_checkpointing_gives_same_outputs_and_gradients(stage):
    torch.manual_seed(0)
    plain = build_network("tiny", stage)
    ckpt = build_network("tiny", stage, use_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = _inputs(plain)
    context = _text(plain) if stage == "lowres" else None
    drop = torch.tensor([True, False]) if stage == "lowres" else None
    results = []
    for net in (plain, ckpt):
        out = net(x, TIME, context, drop)
        out.square().mean().backward()
        # parameters the pass does not use (null_context when text is given) keep grad None in both
        results.append((out.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for n, g in grads_a.items() if "self_attn" in n)


def test_runs_under_autocast(lowres):
    # the CUDA training path uses autocast; CPU bfloat16 autocast exercises the same mixed-dtype code paths
    x, text = _inputs(lowres), _text(lowres)
    with torch.no_grad():
        reference = lowres(x, TIME, text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lowres(x, TIME, text, drop_context=torch.tensor([True, False]))
    assert out.shape == reference.shape and torch.isfinite(out).all()
    # bfloat16 keeps 8 bits of mantissa: ~3 % mean deviation here; garbage or a dtype bug gives ~100 %
    assert (out.float()[1] - reference[1]).abs().mean() < 0.15 * reference.abs().mean()


def test_checkpointing_wraps_each_level_bottleneck_block_and_head_only_with_gradients(monkeypatch):
    import scripts.networks.blocks as blocks

    calls = []
    real = blocks.checkpoint
    monkeypatch.setattr(blocks, "checkpoint", lambda fn, *args, **kw: calls.append(fn) or real(fn, *args, **kw))
    net = build_network("tiny", "lowres", use_checkpointing=True)
    x, text = _inputs(net), _text(net)
    with torch.no_grad():
        net(x, TIME, text)
    assert calls == []  # nothing to recompute without gradients
    net(x, TIME, text)
    # 4 encoder levels, bottleneck res_in + 4 units + res_out, 4 decoder levels, head; no nested checkpoints
    assert len(calls) == 4 + 6 + 4 + 1
    net.use_checkpointing = False
    net(x, TIME, text)
    assert len(calls) == 15 and not net.use_checkpointing


def test_weights_round_trip_and_a_mismatched_file_fails_in_one_line(tmp_path):
    network = build_network("tiny", "sr")
    path = save_network(tmp_path / "sr.pt", network, preset_config("tiny", "sr"), "sr", data={"size": 32})
    loaded, info = load_network(path, "sr")
    assert info["stage"] == "sr" and info["data"] == {"size": 32}
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="lowres weights are needed"):
        load_network(path, "lowres")
    other = build_network("tiny", "lowres")
    with pytest.raises(ValueError, match=r"does not fit its described network: missing \[.*unexpected \[.*; retrain"):
        load_state(other, path, "its described network", "retrain")
