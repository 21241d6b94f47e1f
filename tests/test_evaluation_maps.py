"""The anatomy-maps part of the evaluation (scripts/evaluation/anatomy_maps.py) on phantom cases posing as generated
samples: their maps are the exact truth of their CTs, so fractions match the training data's and the maps agree with
the classical segmentation of the CT; broken maps are caught."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from scripts.data.io import read_nifti, write_nifti
from scripts.diffusion import downsample_nearest
from scripts.evaluation import anatomy_maps, run
from scripts.evaluation.data import datalist_items
from scripts.phantom import write_dataset

FILES = {name: f"{name}.nii.gz" for name in anatomy_maps.MAP_FILES}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Two 64³ phantom cases, each with a writer-style sidecar naming its four files."""
    root = tmp_path_factory.mktemp("maps")
    write_dataset(root, num=2, size=64, seed=3, findings="normal")
    for case in sorted(root.glob("case_*")):
        (case / "sample.json").write_text(json.dumps({"prompt": "a report", "files": FILES}))
    return root


def test_phantom_truth_is_self_consistent_in_order_and_at_the_training_fractions(phantom):
    result = anatomy_maps.evaluate_maps(phantom, datalist_items(phantom / "datalist.json", "training"), progress=False)
    assert sorted(result["samples"]) == ["case_0000/sample", "case_0001/sample"]
    summary = result["summary"]
    assert summary["dice_lung"]["mean"] > 0.95 and summary["dice_airway"]["mean"] > 0.9
    # 0.50 on these two cases: at 5 mm most peripheral vessels are a voxel wide and the vesselness finds about half
    assert summary["dice_vessel"]["mean"] > 0.4
    assert summary["fraction_airway"]["mean"] > 0 and summary["fraction_vessel"]["mean"] > 0
    assert result["in_order"] == 1.0
    grid = result["grids"]["64x64x64"]
    assert grid["n"] == 2 and grid["ratio"] == pytest.approx({"lung": 1.0, "airway": 1.0, "vessel": 1.0})
    text = anatomy_maps.maps_markdown(result)
    assert "| 64x64x64 (2) | airway |" in text and "lobes in anatomical order | 100%" in text


def test_a_model_that_draws_no_airways_and_mirrored_lobes_is_caught(phantom, tmp_path):
    shutil.copytree(phantom / "case_0000", tmp_path / "case_0000")
    case = tmp_path / "case_0000"
    airway, affine = read_nifti(case / "airway.nii.gz")
    write_nifti(case / "airway.nii.gz", np.zeros_like(airway), affine, "uint8", overwrite=True)
    lobe = read_nifti(case / "lobe.nii.gz")[0]
    write_nifti(case / "lobe.nii.gz", lobe[::-1].copy(), affine, "uint8", overwrite=True)  # left and right swapped
    training = datalist_items(phantom / "datalist.json", "training")
    result = anatomy_maps.evaluate_maps(tmp_path, training, progress=False)
    row = result["samples"]["case_0000/sample"]
    assert row["fraction_airway"] == 0 and row["dice_airway"] == 0
    assert result["grids"]["64x64x64"]["ratio"]["airway"] == 0
    assert not row["lobes_in_order"] and "right lobes right of the left lobes" in row["lobe_order_failed"]


def test_lobe_order_names_each_broken_rule():
    lobe = np.zeros((20, 20, 20), np.uint8)
    affine = np.eye(4)
    lobe[2:8, 2:18, 12:18] = 1  # left upper: x small (left), z high
    lobe[2:8, 2:18, 2:10] = 2
    lobe[12:18, 2:18, 14:18] = 3  # right upper
    lobe[12:18, 12:18, 8:13] = 4  # right middle: anterior (y high)
    lobe[12:18, 2:10, 2:12] = 5
    assert anatomy_maps.lobe_order(lobe, affine) == {"in_order": True, "failed": []}
    swapped = np.where(lobe == 4, 5, np.where(lobe == 5, 4, lobe))
    assert anatomy_maps.lobe_order(swapped, affine)["failed"] == ["right middle lobe in front of right lower"]
    flipped_z = lobe[:, :, ::-1]
    assert "left upper lobe above left lower" in anatomy_maps.lobe_order(flipped_z, affine)["failed"]
    assert anatomy_maps.lobe_order(np.where(lobe == 4, 0, lobe), affine)["failed"] == ["lobe 4 missing"]
    # centroids are in patient space: the same map under an affine that flips x is mirrored
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert "right lobes right of the left lobes" in anatomy_maps.lobe_order(lobe, mirror)["failed"]


def test_nearest_resampling_strides_down_as_the_training_data_and_repeats_up():
    volume = np.arange(8 * 8 * 8).reshape(8, 8, 8)
    down = anatomy_maps.resample_nearest(volume, (2, 2, 2))
    expected = downsample_nearest(torch.as_tensor(volume)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(down, expected)
    up = anatomy_maps.resample_nearest(down, (8, 8, 8))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(np.repeat(down, 4, 0), 4, 1), 4, 2))
    with pytest.raises(ValueError, match="3D"):
        anatomy_maps.resample_nearest(volume[0], (2, 2, 2))


def test_folders_without_samples_or_with_missing_files_fail_in_one_line(phantom, tmp_path):
    with pytest.raises(FileNotFoundError, match="no sample sidecars naming ct, lobe, airway and vessel"):
        anatomy_maps.sample_files(tmp_path)
    shutil.copytree(phantom / "case_0001", tmp_path / "case_0001")
    (tmp_path / "case_0001" / "vessel.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="vessel.nii.gz"):
        anatomy_maps.sample_files(tmp_path)


def test_the_evaluation_command_runs_the_maps_part(phantom, tmp_path):
    out = tmp_path / "report"
    run.run_evaluation(
        out, ["maps"], phantom, real_datalist=phantom / "datalist.json", training_split="training", progress=False
    )
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["maps"]["in_order"] == 1.0
    assert "## Generated anatomy maps" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="needs synthetic_dir"):
        run.run_evaluation(tmp_path / "again", ["maps"])
