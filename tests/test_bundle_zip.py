"""The release archive (.ci/package_bundle.py, `make bundle`): what it holds, that it is reproducible, and that the
unpacked bundle runs `python -m monai.bundle run inference` from its own folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from scripts.data.io import OutputExistsError
from scripts.inference.segmentation import JointSegmentationNetwork
from scripts.networks import load_network

REPO = Path(__file__).resolve().parents[1]
VERSION = json.loads((REPO / "configs/metadata.json").read_text())["version"]
DEMO_WEIGHTS = ("lowres_small.pt", "sr_small.pt")


def _packer():
    spec = importlib.util.spec_from_file_location("package_bundle", REPO / ".ci" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, list[str]]:
    path, entries = _packer().write_bundle_zip(REPO, tmp_path_factory.mktemp("zip"))
    return path, [name for name, _ in entries]


def test_archive_holds_the_bundle_folder_and_nothing_else(archive):
    path, entries = archive
    assert path.name == f"medsyn_monai_{VERSION}.zip"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
    assert names == entries == sorted(names)
    assert {name.split("/")[0] for name in names} == {"medsyn_monai"}
    tops = {name.split("/")[1] for name in names}
    assert tops == {"configs", "scripts", "models", "docs", "LICENSE", "large_files.yml", "README.md"}
    for needed in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "scripts/__init__.py"):
        assert f"medsyn_monai/{needed}" in names
    assert "medsyn_monai/docs/README.md" in names and "medsyn_monai/models/README.md" in names
    assert "medsyn_monai/docs/data_license.txt" in names  # the model zoo's third-party data licence file
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/." in n]


def test_archive_is_reproducible_and_not_overwritten_silently(archive, tmp_path):
    path, _ = archive
    packer = _packer()
    again, _ = packer.write_bundle_zip(REPO, tmp_path)
    assert again.read_bytes() == path.read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        packer.write_bundle_zip(REPO, tmp_path)
    with zipfile.ZipFile(path) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_shipped_model_pt_is_the_shipped_demo_weights():
    """models/model.pt (segmentation entry) must be rewritten whenever a demo stage is retrained."""
    models = REPO / "models"
    expected = JointSegmentationNetwork.from_descriptions(models / DEMO_WEIGHTS[0], models / DEMO_WEIGHTS[1], load=True)
    shipped = torch.load(models / "model.pt", weights_only=True)
    stale = [key for key, value in expected.state_dict().items() if not torch.equal(shipped[key], value)]
    assert not stale, f"models/model.pt is stale in {len(stale)} tensors: rewrite it (models/README.md)"


@pytest.mark.slow
def test_unpacked_bundle_runs_inference_from_its_own_folder(archive, tmp_path):
    """The shipped demo weights and the segmentation entry's model.pt load; inference runs stage 1 (one step) from
    the unpacked folder (stage 2 at 256³ would take about a minute here)."""
    with zipfile.ZipFile(archive[0]) as zf:
        zf.extractall(tmp_path)
    bundle = tmp_path / "medsyn_monai"
    models = bundle / "models"
    for name in DEMO_WEIGHTS:
        load_network(models / name)
    segmenter = JointSegmentationNetwork.from_descriptions(models / DEMO_WEIGHTS[0], models / DEMO_WEIGHTS[1])
    segmenter.load_weights(models / "model.pt")  # as MONAI Label loads it: strictly
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # `scripts` must come from the bundle folder
    out = tmp_path / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json"]
    command += ["--output_dir", str(out), "--steps_lowres", "1", "--steps_sr", "1", "--sr_tile", "[16,-1,-1]"]
    command += ["--device", "cpu", "--seed", "3", "--sr_weights", ""]
    run = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    sidecar = json.loads((out / "prompt_seed3.json").read_text())
    assert sidecar["synthetic"] is True and (out / "prompt_seed3_ct.nii.gz").is_file()
    assert (bundle / sidecar["weights"]["lowres"]).resolve() == (bundle / "models" / DEMO_WEIGHTS[0]).resolve()
    found = subprocess.run(
        [sys.executable, "-c", "import scripts; print(scripts.__file__)"],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(found.stdout.strip()).resolve().is_relative_to(bundle.resolve())
