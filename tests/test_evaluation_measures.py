"""Anatomy measures against the phantom's truth.json (64³, 5 mm voxels), with given masks and with each backend."""

from __future__ import annotations

import sys
import types

import nibabel as nib
import numpy as np
import pytest

from scripts.evaluation import anatomy_measures as am
from scripts.evaluation.agreement import compare
from scripts.phantom import generate_case
from scripts.phantom.tissues import Tissue

SIZE = 64


@pytest.fixture(scope="module")
def cases():
    specs = {
        "normal": (0, "normal"),
        "effusion": (1, "effusion:bilateral:large"),
        "cardiomegaly": (2, "cardiomegaly:large"),
        "mixed": (4, "effusion:right:moderate,cardiomegaly:small"),
    }
    return {name: generate_case(SIZE, seed=seed, findings=spec) for name, (seed, spec) in specs.items()}


@pytest.fixture(scope="module")
def measured(cases):
    return {name: am.measure_ct(c.ct_hu, (c.spacing,) * 3) for name, c in cases.items()}


@pytest.mark.parametrize("name", ["normal", "effusion", "cardiomegaly", "mixed"])
def test_cardiothoracic_ratio_within_003(cases, measured, name):
    truth = cases[name].truth
    assert measured[name]["cardiothoracic_ratio"] == pytest.approx(truth["cardiothoracic_ratio"], abs=0.03)
    assert measured[name]["thorax_width_mm"] == pytest.approx(truth["thorax_width_mm"], rel=0.05)


@pytest.mark.parametrize("name", ["normal", "effusion", "mixed"])
def test_effusion_per_side_within_10_percent_or_20_ml(cases, measured, name):
    errors = compare(measured[name], cases[name].truth)
    for side in ("effusion_ml_left", "effusion_ml_right"):
        assert errors[side]["ok"], (side, errors[side])
    total = cases[name].truth["effusion_ml"]["left"] + cases[name].truth["effusion_ml"]["right"]
    assert measured[name]["effusion_ml"] == pytest.approx(total, rel=0.1, abs=20)


def test_lung_volume_on_a_normal_phantom(cases, measured):
    truth = cases["normal"].truth
    assert measured["normal"]["lung_volume_ml"] == pytest.approx(truth["lung_volume_ml"]["total"], rel=0.1)
    assert measured["normal"]["lung_volume_ml_left"] == pytest.approx(truth["lung_volume_ml"]["left"], rel=0.1)
    assert measured["normal"]["lung_volume_ml_right"] == pytest.approx(truth["lung_volume_ml"]["right"], rel=0.1)


def test_given_masks_reproduce_the_truth_exactly(cases):
    case = generate_case(SIZE, seed=5, findings="emphysema:bilateral:moderate")
    masks = {"lobe": case.lobe, "airway": case.airway}
    out = am.measure_ct(
        case.ct_hu,
        (case.spacing,) * 3,
        masks,
        ["lung_volume_ml", "lung_volume_ml_right", "airway_volume_mm3", "laa950_percent"],
    )
    truth = case.truth
    assert out["lung_volume_ml"] == pytest.approx(truth["lung_volume_ml"]["total"], abs=0.01)
    assert out["lung_volume_ml_right"] == pytest.approx(truth["lung_volume_ml"]["right"], abs=0.01)
    assert out["airway_volume_mm3"] == pytest.approx(truth["airway_volume_mm3"], abs=0.1)
    assert out["laa950_percent"] == pytest.approx(truth["laa950_percent"], abs=1e-3)
    assert out["laa950_percent"] > 5  # emphysema present, so this is not 0 == 0


def test_widths_on_known_shapes():
    heart = np.zeros((40, 10, 6), bool)
    thorax = np.zeros_like(heart)
    thorax[5:35, :, :] = True  # 30 voxels wide
    heart[15:25, 3:6, 2] = True  # 10 wide on slice 2
    heart[16:28, 3:6, 4] = True  # 12 wide on slice 4: the widest
    thorax[2:35, :, 4] = True  # 33 wide on slice 4
    out = am.widths(heart, thorax, (2.0, 1.0, 1.0))
    assert out == {"heart_width_mm": 24.0, "thorax_width_mm": 66.0, "cardiothoracic_ratio": pytest.approx(24 / 66)}
    assert np.isnan(am.widths(np.zeros_like(heart), thorax, (1, 1, 1))["cardiothoracic_ratio"])


def test_only_asked_measures_are_made_and_names_are_checked(cases, monkeypatch):
    case = cases["normal"]

    def no_heart(*args):
        raise AssertionError("the heart was not asked for")

    monkeypatch.setattr(am.ClassicalBackend, "heart", no_heart)
    assert set(am.measure_ct(case.ct_hu, (case.spacing,) * 3, measures=["effusion_ml"])) == {"effusion_ml"}
    with pytest.raises(ValueError, match="unknown measures"):
        am.measure_ct(case.ct_hu, (case.spacing,) * 3, measures=["volume"])
    with pytest.raises(ValueError, match="unknown anatomy backend"):
        am.measure_ct(case.ct_hu, (case.spacing,) * 3, backend="magic")


def test_totalsegmentator_backend_without_the_package_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    with pytest.raises(RuntimeError, match="TotalSegmentator package"):
        am.get_backend("totalsegmentator")


def test_totalsegmentator_backend_with_a_fake_package(cases, monkeypatch, tmp_path):
    """The adapter's plumbing (tasks, class maps, sides) with a stand-in that returns the phantom's own tissues."""
    case = cases["mixed"]
    tissue, lobe = case.tissue, case.lobe
    class_map = {
        "total": {
            1: "lung_upper_lobe_left",
            2: "lung_lower_lobe_left",
            3: "lung_upper_lobe_right",
            4: "lung_middle_lobe_right",
            5: "lung_lower_lobe_right",
            51: "heart",
        },
        "lung_vessels": {1: "lung_vessels", 2: "lung_trachea_bronchia"},
        "pleural_pericard_effusion": {1: "pleural_effusion", 2: "pericardial_effusion"},
    }
    calls = []

    def totalsegmentator(image, output, task, **kwargs):
        calls.append(task)
        assert isinstance(image, nib.Nifti1Image) and output is None
        if task == "total":
            labels = np.where(tissue == Tissue.HEART, 51, lobe)
        elif task == "lung_vessels":
            labels = 2 * case.airway
        else:
            labels = (tissue == Tissue.EFFUSION).astype(np.uint8)
        return nib.Nifti1Image(labels.astype(np.uint8), image.affine)

    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = totalsegmentator
    maps = types.ModuleType("totalsegmentator.map_to_binary")
    maps.class_map = class_map
    for name, module in (
        ("totalsegmentator", package),
        ("totalsegmentator.python_api", api),
        ("totalsegmentator.map_to_binary", maps),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="weights not found"):
        am.get_backend("totalsegmentator")
    (tmp_path / "nnunet" / "results" / "Dataset291_TotalSegmentator_part1").mkdir(parents=True)
    out = am.measure_ct(case.ct_hu, (case.spacing,) * 3, backend="totalsegmentator")
    errors = compare(out, case.truth)
    assert all(e["ok"] for e in errors.values()), errors
    assert out["cardiothoracic_ratio"] == pytest.approx(case.truth["cardiothoracic_ratio"], abs=0.01)
    assert sorted(set(calls)) == ["lung_vessels", "pleural_pericard_effusion", "total"]
    assert calls.count("total") == 1  # cached between lungs and heart
