"""Official MedSyn checkpoints → this bundle's weights: the key mapping against the official key lists, one network
evaluation against the official network classes, every key an official checkpoint can hold, which weights file is
read, all-or-nothing loading and the conversion command.

The fixtures in tests/data/official were made by running the official code (tests/data/official/make_fixtures.py):
tiny checkpoints saved by accelerate exactly as the official Trainer saves them (with the schedule buffers of the
first training scripts), and the official networks' outputs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from scripts import convert_official
from scripts.conventions import MEDSYN_OFFICIAL, atlas_grid_affine
from scripts.networks import (
    OfficialCheckpointError,
    build_network,
    convert_official_state_dict,
    drop_schedule_buffers,
    from_official_state_dict,
    infer_official_kwargs,
    load_network,
    official_key_map,
)

OFFICIAL = Path(__file__).resolve().parent / "data" / "official"
CHECKPOINTS = OFFICIAL / "checkpoints"
FILES = {"lowres": "pytorch_model_1.bin", "sr": "pytorch_model.bin"}  # what the official sampling scripts read

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(OFFICIAL / "expected.pt", weights_only=True)


def _state(stage: str, name: str | None = None) -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINTS / stage / "1_ckpt" / (name or FILES[stage]), weights_only=True)


def _official_keys(stage: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for row in (OFFICIAL / f"{stage}_state_dict.tsv").read_text().splitlines():
        key, shape, numel = row.split("\t")
        dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert torch.Size(dims).numel() == int(numel)
        keys[key.removeprefix("denoise_fn.")] = dims
    return keys


def _kwargs(stage: str) -> dict:
    return infer_official_kwargs(drop_schedule_buffers(_state(stage))[0], stage)


# --- the official layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, params", [("lowres", 716_215_684), ("sr", 54_307_908)])
def test_every_official_key_maps_to_a_paper_parameter_of_the_same_shape(stage, params):
    with torch.device("meta"):
        net = build_network("paper", stage)
    official = _official_keys(stage)
    ours = dict(net.state_dict())
    mapping = official_key_map(net, stage)
    reverse = {their: mine for mine, theirs in mapping.items() for their in theirs}
    assert set(reverse) == set(official), "official keys and our mapping differ"
    for key, shape in official.items():
        assert tuple(ours[reverse[key]].shape) == shape, key
    assert sum(p.numel() for p in net.parameters()) == params
    if stage == "lowres":  # the four official copies of the shared attention are one of our tensors
        assert len(mapping["bottleneck.self_attn.to_qkv.weight"]) == 4


@pytest.mark.parametrize(
    "stage, expected_kwargs",
    [
        ("lowres", dict(dim=160, cond_dim=768, dim_mults=(1, 2, 4, 8), channels=4, attn_heads=8)),
        ("sr", dict(dim=56, dim_mults=(1, 2, 4, 8), channels=4, attn_heads=4)),
    ],
)
def test_paper_layout_is_inferred_from_the_official_key_lists(stage, expected_kwargs):
    shapes_only = {f"denoise_fn.{k}": torch.empty(shape, device="meta") for k, shape in _official_keys(stage).items()}
    inferred = infer_official_kwargs(shapes_only, stage)
    assert {k: inferred[k] for k in expected_kwargs} == expected_kwargs


@pytest.mark.parametrize("stage", ["lowres", "sr"])
@pytest.mark.parametrize("order", ["training", "inference"])
def test_one_network_evaluation_reproduces_the_official_class(stage, order, expected):
    """Official ``Unet3D`` of src/train_*.py (training order) and src/eval_*.py (inference order), same weights."""
    net = from_official_state_dict(
        drop_schedule_buffers(_state(stage))[0], stage, decoder_upsample_last=order == "inference", **_kwargs(stage)
    ).eval()
    inputs = expected["forward"]["inputs"][stage]
    reference = expected["forward"]["outputs"][f"{stage}_{order}"]
    context = inputs["cond"] if stage == "lowres" else None
    with torch.no_grad():
        torch.testing.assert_close(net(inputs["x"], inputs["time"], context), reference["output"], atol=1e-4, rtol=0)
        if stage == "lowres":
            null = net(inputs["x"], inputs["time"], None)  # the learned null text of classifier-free guidance
            torch.testing.assert_close(null, reference["output_null_cond"], atol=1e-4, rtol=0)


def test_the_two_decoder_orders_are_different_functions_of_the_same_weights(expected):
    """Our training-order network does not reproduce the official inference scripts' class: the option matters."""
    net = from_official_state_dict(drop_schedule_buffers(_state("lowres"))[0], "lowres", **_kwargs("lowres")).eval()
    inputs = expected["forward"]["inputs"]["lowres"]
    with torch.no_grad():
        out = net(inputs["x"], inputs["time"], inputs["cond"])
    assert (out - expected["forward"]["outputs"]["lowres_inference"]["output"]).abs().max() > 0.05


def test_colliding_keys_after_prefix_removal_are_refused():
    state = _state("sr")
    state["ema_model.denoise_fn.init_conv0.bias"] = state["denoise_fn.init_conv0.bias"] + 1.0
    with pytest.raises(OfficialCheckpointError, match="two keys name init_conv0.bias"):
        drop_schedule_buffers(state)


def test_wrong_stage_is_named():
    with pytest.raises(OfficialCheckpointError, match="use stage 'lowres'"):
        infer_official_kwargs(_state("lowres"), "sr")


# --- what an official checkpoint holds ----------------------------------------------------------------------------


def test_checkpoint_holds_schedule_buffers_and_they_are_dropped():
    state = _state("lowres")
    assert "betas" in state and "ddim_alphas_prev" in state  # saved by the official GaussianDiffusion
    network, dropped = drop_schedule_buffers(state)
    assert "betas" in dropped and len(dropped) == 17
    assert all(k not in network for k in dropped)


def _converted(state: dict[str, torch.Tensor], stage: str = "lowres") -> dict[str, torch.Tensor]:
    network = from_official_state_dict(drop_schedule_buffers(state)[0], stage, **_kwargs(stage))
    return network.state_dict()


@pytest.mark.parametrize("prefix", ["module.", "module.ema_model.", "_orig_mod.", "ema."])
def test_wrapper_prefixes_are_stripped(prefix):
    plain = _converted(_state("lowres"))
    wrapped = _converted({f"{prefix}{k}": v for k, v in _state("lowres").items()})
    assert all(torch.equal(plain[k], wrapped[k]) for k in plain)


def test_truncated_state_dict_lists_missing_keys():
    state = _state("lowres")
    del state["denoise_fn.mid_block2.block1.proj.weight"], state["denoise_fn.ups.0.3.bias"]
    with pytest.raises(OfficialCheckpointError, match=r"missing \(2\): mid_block2.block1.proj.weight, ups.0.3.bias"):
        _converted(state)


def test_renamed_or_unknown_keys_are_unexpected():
    state = _state("lowres")
    state["denoise_fn.mid_block1.mlp.2.weight"] = state.pop("denoise_fn.mid_block1.mlp.1.weight")
    state["step_counter"] = torch.zeros(1)  # not a schedule buffer: never dropped silently
    with pytest.raises(OfficialCheckpointError) as err:
        _converted(state)
    assert "missing (1): mid_block1.mlp.1.weight" in str(err.value)
    assert "unexpected (2): mid_block1.mlp.2.weight, step_counter" in str(err.value)


def test_wrong_shape_and_untied_attention_are_listed():
    state = _state("lowres")
    state["denoise_fn.null_cond_emb"] = torch.zeros(1, 192, 16)
    with pytest.raises(OfficialCheckpointError, match=r"wrong shape \(1\): null_cond_emb: checkpoint \(1, 192, 16\)"):
        _converted(state)
    state = _state("lowres")
    key = "denoise_fn.mid_spatial_attn3.fn.fn.fn.to_out.weight"
    state[key] = state[key] + 1.0
    with pytest.raises(OfficialCheckpointError, match="not tied"):
        _converted(state)


def test_failed_conversion_loads_nothing():
    net = build_network("tiny", "lowres")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = drop_schedule_buffers(_state("lowres"))[0]
    del state["init_conv.bias"]
    with pytest.raises(OfficialCheckpointError):
        net.load_state_dict(convert_official_state_dict(state, net, "lowres"))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_unknown_official_argument_is_refused():
    with pytest.raises(TypeError, match="dim_multz"):
        from_official_state_dict(_state("lowres"), "lowres", dim=8, cond_dim=32, dim_multz=(1, 2))


# --- which file, and the command line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, kind, name", [("lowres", "ema", "pytorch_model_1.bin"), ("sr", "live", "pytorch_model.bin")]
)
def test_default_weights_are_those_the_official_sampling_script_loads(stage, kind, name):
    """The results folder is read as Trainer.load(-1) reads it: the highest <n>_ckpt."""
    path, chosen = convert_official.resolve_checkpoint(CHECKPOINTS / stage, stage)
    assert (path.parent.name, path.name, chosen) == ("1_ckpt", name, kind)
    other = "live" if kind == "ema" else "ema"
    assert convert_official.resolve_checkpoint(CHECKPOINTS / stage, stage, other)[1] == other


def test_newest_numbered_checkpoint_is_taken(tmp_path):
    for n in (2, 10, 9):
        shutil.copytree(CHECKPOINTS / "sr" / "1_ckpt", tmp_path / f"{n}_ckpt")
    assert convert_official.newest_checkpoint_folder(tmp_path).name == "10_ckpt"  # numerically, as the official


def test_missing_ema_file_names_the_choice(tmp_path):
    folder = tmp_path / "1_ckpt"
    shutil.copytree(CHECKPOINTS / "lowres" / "1_ckpt", folder)
    (folder / "pytorch_model_1.bin").unlink()
    with pytest.raises(FileNotFoundError, match="--weights live"):
        convert_official.resolve_checkpoint(tmp_path, "lowres")


def test_safetensors_checkpoints_convert_to_the_same_weights(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "1_ckpt"
    folder.mkdir()
    # newer accelerate's name for the EMA model; it keeps one name per shared tensor (the attention of the 4 units)
    state = {k: v for k, v in _state("lowres").items() if not re.match(r"denoise_fn.mid_spatial_attn[234].fn.fn.fn", k)}
    save_file(state, str(folder / "model_1.safetensors"))
    path, kind = convert_official.resolve_checkpoint(tmp_path, "lowres")
    assert (path.name, kind) == ("model_1.safetensors", "ema")
    plain, loaded = _converted(_state("lowres")), _converted(convert_official.load_state_dict(path))
    assert all(torch.equal(plain[k], loaded[k]) for k in plain)


def test_cli_writes_the_official_conventions_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "converted" / "lowres.pt"
    args = ["--checkpoint", str(CHECKPOINTS / "lowres"), "--stage", "lowres", "--out", str(out), "--size", "32"]
    assert convert_official.main(args) == 0
    printed = capsys.readouterr().out
    assert "read ema weights" in printed and "17 schedule buffers dropped" in printed

    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["weights"] == "ema" and meta["source"].endswith("1_ckpt/pytorch_model_1.bin")
    assert meta["conventions"] == MEDSYN_OFFICIAL.as_dict() and meta["decoder_order"] == "training"
    assert meta["data"]["size"] == 32 and meta["data"]["size_mode"] == "atlas"
    assert meta["data"]["affine"] == atlas_grid_affine(32).tolist()
    assert meta["text_encoder"] is None and meta["text_encoder_info"]["context_tokens"] == 2048
    assert meta["text_encoder_info"]["text_input"] == "raw" and meta["text_encoder_info"]["hidden_size"] == 32
    net, info = load_network(out, "lowres")  # a plain state dict with our keys, loaded strictly
    assert info["network"]["decoder_upsample_last"] is False

    first = out.read_bytes()
    assert convert_official.main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert convert_official.main(args + ["--overwrite", "--decoder_order", "inference"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["network"]["decoder_upsample_last"] is True
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]


def test_cli_missing_checkpoint_says_where_to_put_it(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert convert_official.main(["--checkpoint", str(tmp_path / "nope"), "--stage", "sr", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "<n>_ckpt" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_incomplete_checkpoint_fails_without_output(tmp_path, capsys):
    state = _state("lowres")
    del state["denoise_fn.final_conv.1.bias"]
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    out = tmp_path / "x.pt"
    assert convert_official.main(["--checkpoint", str(path), "--stage", "lowres", "--out", str(out)]) == 1
    assert "final_conv.1.bias" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()
