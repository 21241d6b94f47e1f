"""Anatomy measures against the phantom's truth.json (64³, 5 mm voxels), with given masks and with each backend."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import nibabel as nib
import numpy as np
import pytest
from conftest import write_fake_totalsegmentator

from scripts.anatomy import totalseg_backend
from scripts.anatomy.base import BackendUnavailableError, MissingWeightsError
from scripts.evaluation import anatomy_measures as am
from scripts.evaluation.__main__ import main as evaluation_main
from scripts.evaluation.agreement import compare
from scripts.evaluation.run import run_evaluation
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
def test_cardiothoracic_ratio_within_003_or_10_percent(cases, measured, name):
    """The agreement rule of docs/evaluation.md. A large heart turned along its long axis reaches the left chest
    wall with no lung lateral to it, and the classical heart (soft tissue between the lungs) misses that part
    (cardiomegaly:large here: 0.70 against 0.745)."""
    truth = cases[name].truth["cardiothoracic_ratio"]
    assert abs(measured[name]["cardiothoracic_ratio"] - truth) <= max(0.03, 0.1 * truth), (measured[name], truth)
    truth = cases[name].truth
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


@pytest.mark.parametrize("name", ["normal", "effusion", "cardiomegaly", "mixed"])
def test_airway_volume_and_laa950_without_emphysema(cases, measured, name):
    """26-connected growing finds bronchi a voxel thin; noise-level lung stays out, so %LAA-950 stays near 0."""
    truth = cases[name].truth
    assert measured[name]["airway_volume_mm3"] == pytest.approx(truth["airway_volume_mm3"], rel=0.1)
    assert measured[name]["laa950_percent"] == pytest.approx(truth["laa950_percent"], abs=0.5)


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


def test_dome_top_reads_only_columns_over_the_right_lung():
    """Fluid-density tissue beside the apex or down the chest wall, read as effusion, adds thorax columns that are
    not over the diaphragm (a few voxels high near the top, or tall but without lung): taking them for it would cut
    the heart away."""
    lungs = np.zeros((40, 30, 64), np.uint8)
    lungs[5:18, 5:25, 10:55] = 1
    lungs[22:35, 5:25, 12:55] = 2  # the right lung's lowest voxel: 12 in every column
    thorax = lungs > 0
    assert am.dome_top(thorax, lungs) == 12
    thorax[30:36, 25:29, 58:62] = True  # 6 × 4 columns, 4 voxels high, outside the lung's footprint
    assert am.dome_top(thorax, lungs) == 12
    # fluid-density chest wall read as effusion down the lateral wall: tall columns, but no lung in them
    thorax[35:39, 5:25, 30:55] = True
    assert am.dome_top(thorax, lungs) == 12
    thorax[22:35, 5:25, 6:12] = True  # fluid under the lung (a real effusion in the recess) sets the dome
    assert am.dome_top(thorax, lungs) == 6


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


# --- TotalSegmentator (never installed here: fake modules stand in, weight folders are temporary paths) ----------
ALL_DATASETS = (258, 291, 292, 293, 294, 295, 298, 315)


@pytest.fixture
def totalseg_home(monkeypatch, tmp_path):
    """TotalSegmentator's weight lookups point into an empty temporary folder; no separate interpreter is set."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    for name in ("TOTALSEG_WEIGHTS_PATH", totalseg_backend.PYTHON_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "totalseg" / "nnunet" / "results"


def put_weights(root, *ids):
    for dataset in ids:
        folder = root / totalseg_backend.DATASETS[dataset]
        folder.mkdir(parents=True)
        (folder / "plans.json").write_text("{}")


FAKE_CLASS_MAP = {
    "total": {1: "lung_upper_lobe_left", 2: "lung_lower_lobe_left", 3: "lung_upper_lobe_right",
              4: "lung_middle_lobe_right", 5: "lung_lower_lobe_right", 51: "heart"},
    "lung_vessels": {1: "lung_vessels", 2: "lung_trachea_bronchia"},
    "pleural_pericard_effusion": {1: "pleural_effusion", 2: "pericardial_effusion"},
}  # fmt: skip


def install_fake_totalsegmentator(monkeypatch, segment):
    """Fake ``totalsegmentator`` modules whose API calls ``segment(image, task, kwargs)`` and logs each call."""
    calls = []

    def totalsegmentator(image, output=None, **kwargs):
        calls.append(kwargs)
        assert isinstance(image, nib.Nifti1Image) and output is None and kwargs["ml"] is True
        return nib.Nifti1Image(segment(image, kwargs["task"]).astype(np.uint8), image.affine)

    package = types.ModuleType("totalsegmentator")
    package.__spec__ = importlib.machinery.ModuleSpec("totalsegmentator", None)
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = totalsegmentator
    maps = types.ModuleType("totalsegmentator.map_to_binary")
    maps.class_map = FAKE_CLASS_MAP
    for name, module in (
        ("totalsegmentator", package),
        ("totalsegmentator.python_api", api),
        ("totalsegmentator.map_to_binary", maps),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_totalsegmentator_without_the_package_or_weights_says_so_in_one_line(cases, monkeypatch, totalseg_home):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)  # not importable
    case = cases["normal"]
    with pytest.raises(BackendUnavailableError) as info:
        am.measure_ct(case.ct_hu, (case.spacing,) * 3, backend="totalsegmentator")
    message = str(info.value)
    assert "not installed" in message and "--totalseg_python" in message and "\n" not in message
    assert "Dataset315_thoraxCT" in message and str(totalseg_home) in message
    # the evaluate command stops before reading any volume, with the same line
    with pytest.raises(BackendUnavailableError, match="not installed"):
        run_evaluation(totalseg_home / "out", ["measures"], "no_synthetic", real_datalist="no_datalist.json",
                       backend="totalsegmentator")  # fmt: skip


def test_totalsegmentator_missing_weights_name_only_the_folders_needed(cases, monkeypatch, totalseg_home, tmp_path):
    install_fake_totalsegmentator(monkeypatch, lambda image, task: np.zeros(image.shape))
    case = cases["normal"]
    with pytest.raises(MissingWeightsError) as info:
        am.measure_ct(case.ct_hu, (case.spacing,) * 3, backend="totalsegmentator")
    message = str(info.value)
    assert "\n" not in message and str(totalseg_home) in message and "TOTALSEG_WEIGHTS_PATH" in message
    for dataset in ALL_DATASETS:
        assert totalseg_backend.DATASETS[dataset] in message
    assert "-t lung_vessels" in message and "-t pleural_pericard_effusion" in message and "-t total" in message
    # effusion needs the lungs (total) and the effusion task, not lung_vessels
    with pytest.raises(MissingWeightsError) as info:
        am.measure_ct(case.ct_hu, (case.spacing,) * 3, measures=["effusion_ml"], backend="totalsegmentator")
    assert "Dataset315_thoraxCT" in str(info.value) and "Dataset258" not in str(info.value)
    # the command line prints it as one line
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.ct_hu, case.affine), str(path))
    with pytest.raises(SystemExit) as exit_info:
        evaluation_main(["measure", str(path), "--backend", "totalsegmentator", "--measures", "effusion_ml"])
    assert str(exit_info.value).startswith("error: totalsegmentator weights not found: ")
    assert "Dataset315_thoraxCT" in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_totalsegmentator_measures_with_a_fake_package(cases, monkeypatch, totalseg_home):
    """Tasks, class maps and sides with a stand-in that returns the phantom's own tissues."""
    case = cases["mixed"]

    def segment(image, task):
        if task == "total":
            return np.where(case.tissue == Tissue.HEART, 51, case.lobe)
        if task == "lung_vessels":
            return 2 * case.airway
        return (case.tissue == Tissue.EFFUSION).astype(np.uint8)

    calls = install_fake_totalsegmentator(monkeypatch, segment)
    put_weights(totalseg_home, *ALL_DATASETS)
    backend = am.get_backend("totalsegmentator", device="cpu")
    out = am.measure_ct(case.ct_hu, (case.spacing,) * 3, backend=backend)
    errors = compare(out, case.truth)
    assert all(e["ok"] for e in errors.values()), errors
    assert out["airway_volume_mm3"] == pytest.approx(case.truth["airway_volume_mm3"], abs=0.1)
    assert out["lung_volume_ml_left"] == pytest.approx(case.truth["lung_volume_ml"]["left"], abs=0.01)
    assert out["cardiothoracic_ratio"] == pytest.approx(case.truth["cardiothoracic_ratio"], abs=0.01)
    assert [c["task"] for c in calls] == ["total", "lung_vessels", "pleural_pericard_effusion"]  # each once
    assert calls[0]["roi_subset"] == [*totalseg_backend.LOBE_CLASSES, "heart"] and calls[0]["device"] == "cpu"
    # the same instance on another CT runs the tasks again (no stale cache)
    other = cases["normal"]
    again = am.measure_ct(other.ct_hu.copy(), (other.spacing,) * 3, measures=["airway_volume_mm3"], backend=backend)
    assert len(calls) == 4 and again["airway_volume_mm3"] == pytest.approx(out["airway_volume_mm3"])
    with pytest.raises(ValueError, match="unknown option"):
        am.get_backend("totalsegmentator", threshold=3)


def test_totalsegmentator_measures_in_a_separate_interpreter(monkeypatch, totalseg_home, tmp_path):
    """With ``totalseg_python`` the tasks run in another interpreter (scripts.anatomy.totalseg_runner)."""
    write_fake_totalsegmentator(
        tmp_path / "fake_env",
        FAKE_CLASS_MAP,
        """
            import json, os
            import nibabel as nib
            import numpy as np

            def totalsegmentator(input, output=None, **kwargs):
                with open(os.environ["FAKE_TS_LOG"], "a") as f:
                    f.write(json.dumps(kwargs) + "\\n")
                n = input.shape[0]
                seg = np.zeros(input.shape, dtype=np.uint8)
                if kwargs["task"] == "total":
                    seg[1:7, 2:-2, 2:-2] = 2  # left lower lobe on the -x side
                    seg[n - 7 : n - 1, 2:-2, 2:-2] = 4  # right middle lobe on the +x side
                    seg[9 : n - 9, 6:-6, 6:-6] = 51  # heart between them
                elif kwargs["task"] == "pleural_pericard_effusion":
                    seg[1:7, 0:2, 2:-2] = 1  # pleural fluid behind the left lung
                    seg[9 : n - 9, 4:6, 6:-6] = 2  # pericardial fluid: not pleural
                else:
                    seg[n // 2, 2:-2, 2:-2] = 2
                return nib.Nifti1Image(seg, input.affine)
            """,
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake_env"))
    monkeypatch.setenv("FAKE_TS_LOG", str(tmp_path / "log.jsonl"))
    put_weights(totalseg_home, *ALL_DATASETS)
    ct = np.full((24, 20, 20), -800.0, dtype=np.float32)
    backend = am.get_backend("totalsegmentator", device="cpu", totalseg_python=sys.executable)
    out = am.measure_ct(ct, (2.0, 2.0, 2.0), backend=backend)
    voxel_ml = 8.0 / 1000.0
    assert out["lung_volume_ml_left"] == pytest.approx(6 * 16 * 16 * voxel_ml)
    assert out["lung_volume_ml_right"] == pytest.approx(6 * 16 * 16 * voxel_ml)
    assert out["effusion_ml_left"] == pytest.approx(6 * 2 * 16 * voxel_ml) and out["effusion_ml_right"] == 0
    assert out["heart_width_mm"] == pytest.approx(6 * 2.0) and out["thorax_width_mm"] == pytest.approx(22 * 2.0)
    assert out["airway_volume_mm3"] == pytest.approx(16 * 16 * 8.0)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [c["task"] for c in logged] == ["total", "lung_vessels", "pleural_pericard_effusion"]
