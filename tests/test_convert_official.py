"""Official MedSyn checkpoints: key mapping against the official key lists, numerical agreement with the official
forward pass (reference fixtures), all-or-nothing loading, and the conversion CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from scripts import convert_official
from scripts.networks import (
    OfficialCheckpointError,
    build_network,
    convert_official_state_dict,
    from_official_state_dict,
    infer_official_kwargs,
    official_key_map,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("MEDSYN_REFERENCE_DIR", REPO.parent / "shared/reference/medsyn_official"))
TINY_OFFICIAL = dict(dim=8, cond_dim=32, dim_mults=(1, 2, 4, 8), channels=4, attn_heads=2, resnet_groups=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(name: str) -> Path:
    path = REFERENCE_DIR / name
    if not path.exists():
        pytest.fail(f"{path} missing: set MEDSYN_REFERENCE_DIR to the folder holding the MedSyn reference files")
    return path


def _fixture(stage: str) -> dict:
    return torch.load(_reference(f"{stage}_fixture.pt"), weights_only=True)


def _official_keys(stage: str) -> dict[str, tuple[int, ...]]:
    rows = _reference(f"{stage}_state_dict.tsv").read_text().splitlines()
    keys = {}
    for row in rows:
        key, shape, numel = row.split("\t")
        dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert torch.Size(dims).numel() == int(numel)
        keys[key.removeprefix("denoise_fn.")] = dims
    return keys


@pytest.fixture(scope="module")
def lowres_fixture() -> dict:
    return _fixture("lowres")


def _tiny_official_state_dict(lowres_fixture) -> dict[str, torch.Tensor]:
    return dict(lowres_fixture["state_dict"])


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


@pytest.mark.parametrize("stage", ["lowres", "sr"])
def test_reproduces_the_official_forward(stage):
    fixture = _fixture(stage)
    net = from_official_state_dict(fixture["state_dict"], stage, **fixture["config"]).eval()
    inputs = fixture["inputs"]
    context = inputs["cond"] if stage == "lowres" else None
    with torch.no_grad():
        out = net(inputs["x"], inputs["time"], context)
        torch.testing.assert_close(out, fixture["output"], atol=1e-4, rtol=0)
        if stage == "lowres":
            null = net(inputs["x"], inputs["time"], None)
            torch.testing.assert_close(null, fixture["extra_outputs"]["output_null_cond"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("stage", ["lowres", "sr"])
def test_layout_is_inferred_from_tensor_shapes(stage):
    fixture = _fixture(stage)
    inferred = infer_official_kwargs(fixture["state_dict"], stage)
    config = fixture["config"]
    for name in ("dim", "channels", "attn_heads", "resnet_groups"):
        assert inferred[name] == config[name], name
    assert list(inferred["dim_mults"]) == list(config["dim_mults"])
    if stage == "lowres":
        assert inferred["cond_dim"] == config["cond_dim"]


@pytest.mark.parametrize(
    "stage, expected",
    [
        ("lowres", dict(dim=160, cond_dim=768, dim_mults=(1, 2, 4, 8), channels=4, attn_heads=8)),
        ("sr", dict(dim=56, dim_mults=(1, 2, 4, 8), channels=4, attn_heads=4)),
    ],
)
def test_paper_layout_is_inferred_from_the_official_key_lists(stage, expected):
    shapes_only = {f"denoise_fn.{k}": torch.empty(shape, device="meta") for k, shape in _official_keys(stage).items()}
    inferred = infer_official_kwargs(shapes_only, stage)
    assert {k: inferred[k] for k in expected} == expected


def test_wrong_stage_is_named(lowres_fixture):
    with pytest.raises(OfficialCheckpointError, match="use stage 'lowres'"):
        infer_official_kwargs(lowres_fixture["state_dict"], "sr")


# --- all-or-nothing loading -----------------------------------------------------------------------------------


def test_prefixes_are_stripped(lowres_fixture):
    plain = {k.removeprefix("denoise_fn."): v for k, v in lowres_fixture["state_dict"].items()}
    multi_gpu = {f"module.denoise_fn.{k}": v for k, v in plain.items()}
    a = from_official_state_dict(plain, "lowres", **TINY_OFFICIAL)
    b = from_official_state_dict(multi_gpu, "lowres", **TINY_OFFICIAL)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_truncated_state_dict_lists_missing_keys(lowres_fixture):
    sd = _tiny_official_state_dict(lowres_fixture)
    del sd["denoise_fn.mid_block2.block1.proj.weight"], sd["denoise_fn.ups.1.3.bias"]
    with pytest.raises(OfficialCheckpointError, match=r"missing \(2\): mid_block2.block1.proj.weight, ups.1.3.bias"):
        from_official_state_dict(sd, "lowres", **TINY_OFFICIAL)


def test_renamed_key_is_listed_as_unexpected_and_missing(lowres_fixture):
    sd = _tiny_official_state_dict(lowres_fixture)
    sd["denoise_fn.mid_block1.mlp.2.weight"] = sd.pop("denoise_fn.mid_block1.mlp.1.weight")
    with pytest.raises(OfficialCheckpointError) as err:
        from_official_state_dict(sd, "lowres", **TINY_OFFICIAL)
    assert "missing (1): mid_block1.mlp.1.weight" in str(err.value)
    assert "unexpected (1): mid_block1.mlp.2.weight" in str(err.value)


def test_wrong_shape_is_listed(lowres_fixture):
    sd = _tiny_official_state_dict(lowres_fixture)
    sd["denoise_fn.null_cond_emb"] = torch.zeros(1, 192, 16)
    with pytest.raises(OfficialCheckpointError, match=r"wrong shape \(1\): null_cond_emb: checkpoint \(1, 192, 16\)"):
        from_official_state_dict(sd, "lowres", **TINY_OFFICIAL)


def test_shared_attention_copies_must_be_equal(lowres_fixture):
    sd = _tiny_official_state_dict(lowres_fixture)
    key = "denoise_fn.mid_spatial_attn3.fn.fn.fn.to_out.weight"
    sd[key] = sd[key] + 1.0
    with pytest.raises(OfficialCheckpointError, match="not tied"):
        from_official_state_dict(sd, "lowres", **TINY_OFFICIAL)


def test_failed_conversion_loads_nothing(lowres_fixture):
    net = build_network("tiny", "lowres")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = _tiny_official_state_dict(lowres_fixture)
    del sd["denoise_fn.init_conv.bias"]
    with pytest.raises(OfficialCheckpointError):
        net.load_state_dict(convert_official_state_dict(sd, net, "lowres"))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_unknown_official_argument_is_refused(lowres_fixture):
    with pytest.raises(TypeError, match="dim_multz"):
        from_official_state_dict(lowres_fixture["state_dict"], "lowres", dim=8, cond_dim=32, dim_multz=(1, 2))


# --- command line ---------------------------------------------------------------------------------------------


def _accelerate_folder(tmp_path: Path, lowres_fixture) -> Path:
    """A fake accelerate checkpoint: live weights = EMA weights + 1, so the file used can be told apart."""
    folder = tmp_path / "checkpoint-1000"
    folder.mkdir()
    ema = {f"module.{k}": v for k, v in lowres_fixture["state_dict"].items()}
    torch.save(ema, folder / "pytorch_model_1.bin")
    torch.save({k: v + 1 for k, v in ema.items()}, folder / "pytorch_model.bin")
    return folder


def test_cli_round_trip_prefers_ema_and_refuses_overwrite(tmp_path, lowres_fixture, capsys):
    folder = _accelerate_folder(tmp_path, lowres_fixture)
    out = tmp_path / "converted" / "lowres.pt"
    args = ["--checkpoint", str(folder), "--stage", "lowres", "--out", str(out)]
    assert convert_official.main(args) == 0
    assert "EMA weights" in capsys.readouterr().out

    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["ema"] and meta["source"].endswith("pytorch_model_1.bin")
    net = build_network("tiny", "lowres")  # the same layout as the fixture
    assert meta["stage"] == "lowres" and meta["network"] == net.config
    net.load_state_dict(torch.load(out, weights_only=True))  # a plain state dict with our keys
    inputs = lowres_fixture["inputs"]
    with torch.no_grad():
        out_ours = net.eval()(inputs["x"], inputs["time"], inputs["cond"])
    torch.testing.assert_close(out_ours, lowres_fixture["output"], atol=1e-4, rtol=0)

    first = out.read_bytes()
    assert convert_official.main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert convert_official.main(args + ["--overwrite"]) == 0
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_reads_live_weights_when_no_ema(tmp_path, lowres_fixture, capsys):
    folder = _accelerate_folder(tmp_path, lowres_fixture)
    (folder / "pytorch_model_1.bin").unlink()
    out = tmp_path / "live.pt"
    assert convert_official.main(["--checkpoint", str(folder), "--stage", "lowres", "--out", str(out)]) == 0
    assert "pytorch_model.bin" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["ema"] is False


def test_cli_reads_a_plain_state_dict_file(tmp_path):
    fixture = _fixture("sr")
    path = tmp_path / "sr.bin"
    torch.save(fixture["state_dict"], path)
    out = tmp_path / "sr.pt"
    assert convert_official.main(["--checkpoint", str(path), "--stage", "sr", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["network"]["in_channels"] == 8 and meta["network"]["context_dim"] is None
    assert "text_encoder" not in meta


def test_cli_missing_checkpoint_says_where_to_put_it(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert convert_official.main(["--checkpoint", str(tmp_path / "nope"), "--stage", "sr", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "accelerate checkpoint folder" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_incomplete_checkpoint_fails_without_output(tmp_path, lowres_fixture, capsys):
    sd = dict(lowres_fixture["state_dict"])
    del sd["denoise_fn.final_conv.1.bias"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    out = tmp_path / "x.pt"
    assert convert_official.main(["--checkpoint", str(path), "--stage", "lowres", "--out", str(out)]) == 1
    assert "final_conv.1.bias" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()
