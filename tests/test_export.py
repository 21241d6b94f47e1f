"""Exporting denoisers (scripts/networks/export.py): TorchScript and torch.export files loaded back match eager,
keep their input handling, carry their metadata; the model zoo's ckpt_export works on configs/export.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripts.networks import build_network, preset_config, save_network
from scripts.networks.export import example_inputs, export_weights, load_exported, main

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def _save_weights(root: Path, **overrides) -> dict[str, Path]:
    """Random weights of both ``tiny`` stages (with ``overrides``) in the bundle's format, 32³ grid (low-res 8³)."""
    torch.manual_seed(0)
    data = {"spacing": [10.0, 10.0, 10.0], "size": 32, "size_mode": "pad_crop"}
    paths = {}
    for stage in ("lowres", "sr"):
        config = {**preset_config("tiny", stage), **overrides}
        paths[stage] = save_network(
            root / f"{stage}.pt", build_network("tiny", stage, **config), config, stage, data=data
        )
    return paths


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    return _save_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def shallow_weights(tmp_path_factory) -> dict[str, Path]:
    """Two levels and one bottleneck unit: every kind of block, and torch.export takes seconds instead of a minute."""
    return _save_weights(tmp_path_factory.mktemp("shallow"), width_mults=(1, 2), bottleneck_depth=1)


def _eager(path: Path):
    from scripts.networks import load_network

    return load_network(path)[0]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("stage", ["lowres", "sr"])
def test_torchscript_file_matches_eager_with_and_without_text(stage, weights, tmp_path):
    out = tmp_path / f"{stage}.ts"
    result = export_weights(weights[stage], out)
    assert result["max_abs_diff"] <= TOLERANCE and result["stage"] == stage
    scripted, eager = load_exported(out), _eager(weights[stage])
    # a batch, depth and width other than those checked at export: the scripted forward keeps every shape free
    x, t, *context = example_inputs(eager, batch=3, spatial=(5, 16, 24), seed=7)
    with torch.no_grad():
        assert _max_diff(scripted(x, t), eager(x, t)) <= TOLERANCE  # context=None: the learned null text
        if stage == "lowres":
            (text,) = context
            assert _max_diff(scripted(x, t, text), eager(x, t, text)) <= TOLERANCE
            drop = torch.tensor([True, False, True])
            assert _max_diff(scripted(x, t, text, drop), eager(x, t, text, drop)) <= TOLERANCE
    with pytest.raises(torch.jit.Error, match="multiples of 8"):  # the input checks are scripted too
        scripted(torch.zeros(1, eager.in_channels, 2, 12, 16), torch.ones(1))


def test_torchscript_file_carries_metadata_and_description(weights, tmp_path):
    out = tmp_path / "lowres.ts"
    export_weights(weights["lowres"], out)
    extra = {"metadata.json": "", "description.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    bundle = json.loads((REPO / "configs/metadata.json").read_text())
    assert json.loads(extra["metadata.json"])["version"] == bundle["version"]
    description = json.loads(extra["description.json"])
    assert description["stage"] == "lowres" and description["network"]["context_dim"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["lowres", "sr"])
def test_exported_program_file_matches_eager(stage, shallow_weights, tmp_path):
    out = tmp_path / f"{stage}.pt2"
    export_weights(shallow_weights[stage], out, format="exported_program", check=False)  # compared here instead
    program, eager = load_exported(out), _eager(shallow_weights[stage])
    x, t, *context = example_inputs(eager, batch=3, spatial=(5, 8, 12), seed=7)  # dynamic batch, D, H, W
    with torch.no_grad():
        if stage == "sr":
            assert _max_diff(program(x, t), eager(x, t)) <= TOLERANCE
            return
        (text,) = context
        assert _max_diff(program(x, t, text), eager(x, t, text)) <= TOLERANCE
        # the program's inputs are fixed at export: context=None is the stored null text passed explicitly
        null = dict(program.named_parameters())["null_context"].expand(3, -1, -1)
        assert _max_diff(program(x, t, null), eager(x, t)) <= TOLERANCE


def test_cli_refuses_missing_weights_existing_output_and_wrong_suffix(weights, tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "a.ts")]) == 1
    assert "no network weights at" in capsys.readouterr().err and not (tmp_path / "a.ts").exists()

    existing = tmp_path / "b.ts"
    existing.write_text("keep")
    assert main(["--weights", str(weights["sr"]), "--out", str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err and existing.read_text() == "keep"

    assert main(["--weights", str(weights["sr"]), "--out", str(tmp_path / "c.ts"), "--format", "exported_program"]) == 1
    assert ".pt2" in capsys.readouterr().err

    assert main(["--weights", str(weights["sr"]), "--out", str(existing), "--overwrite", "--no_check"]) == 0
    assert "wrote" in capsys.readouterr().out and torch.jit.load(str(existing)) is not None


def test_monai_ckpt_export_scripts_the_config_network(weights, tmp_path):
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    out = tmp_path / "lowres_zoo.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(out),
        ckpt_file=str(weights["lowres"]),
        config_file=str(REPO / "configs/export.json"),
        meta_file=str(REPO / "configs/metadata.json"),
        weights=str(weights["lowres"]),
    )
    scripted, meta, _ = load_net_with_metadata(str(out))
    eager = _eager(weights["lowres"])
    x, t, text = example_inputs(eager, spatial=(3, 16, 16))
    with torch.no_grad():
        assert _max_diff(scripted(x, t, text), eager(x, t, text)) <= TOLERANCE
        assert _max_diff(scripted(x, t), eager(x, t)) <= TOLERANCE
    assert meta["version"] == json.loads((REPO / "configs/metadata.json").read_text())["version"]
