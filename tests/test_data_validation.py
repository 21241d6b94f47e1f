"""Bad inputs: each gets a clear error naming the case and file, from the pipeline and from the dataset scan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.datalist import DataError, load_datalist
from scripts.data.io import ras_affine, write_json
from scripts.data.transforms import build_preprocessing
from scripts.data.validation import main as scan_main
from scripts.data.validation import scan_dataset
from tests.test_data_transforms import N, write_case


def _save(path: str, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Overwrite a case file with any array, bypassing the checks of scripts.data.io.write_nifti."""
    affine = ras_affine((1.5, 1.5, 1.5), array.shape[:3]) if affine is None else affine
    nib.save(nib.Nifti1Image(array, affine), path)


def _garbage(item):
    Path(item["image"]).write_bytes(b"not a nifti file")
    return "image", "cannot read as NIfTI"


def _missing_image(item):
    Path(item["image"]).unlink()
    return "image", "'image' file not found"


def _two_d(item):
    _save(item["image"], np.zeros((N, N), np.int16), np.eye(4))
    return "image", r"shape \(24, 24\); expected one 3D volume"


def _four_d(item):
    _save(item["image"], np.zeros((N, N, N, 2), np.int16))
    return "image", r"shape \(24, 24, 24, 2\); expected one 3D volume"


def _nan(item):
    ct = np.asanyarray(nib.load(item["image"]).dataobj).astype(np.float32)
    ct[3, 4, 5] = np.nan
    _save(item["image"], ct)
    return "image", "1 NaN/inf voxel"


def _inf(item):
    ct = np.asanyarray(nib.load(item["image"]).dataobj).astype(np.float32)
    ct[:2, 0, 0] = np.inf
    _save(item["image"], ct)
    return "image", "2 NaN/inf voxel"


def _mask_shape(item):
    _save(item["airway"], np.zeros((N, N, N - 2), np.uint8))
    return "airway", r"'airway' shape \(24, 24, 22\) differs from the image's \(24, 24, 24\)"


def _mask_affine(item):
    _save(item["vessel"], np.zeros((N,) * 3, np.uint8), ras_affine((1.5, 1.5, 1.6), (N,) * 3))
    return "vessel", "'vessel' affine differs from the image's by up to"


def _lobe_range(item):
    lobe = np.asanyarray(nib.load(item["lobe"]).dataobj).copy()
    lobe[lobe == 5] = 7
    _save(item["lobe"], lobe)
    return "lobe", r"'lobe' labels out of range: values 0..7, expected 0..5"


def _airway_range(item):
    airway = np.asanyarray(nib.load(item["airway"]).dataobj) * 255
    _save(item["airway"], airway.astype(np.uint8))
    return "airway", r"'airway' labels out of range: values 0..255, expected 0..1"


def _vessel_fraction(item):
    _save(item["vessel"], np.full((N,) * 3, 0.5, np.float32))
    return "vessel", "'vessel' holds non-integer values"


def _empty_report(item):
    item["report"] = "  \n"
    return None, "report is empty"


def _empty_report_file(item):
    del item["report"]
    item["report_file"] = str(Path(item["image"]).with_name("report.txt"))
    Path(item["report_file"]).write_text(" \n")
    return "report_file", "report file is empty"


def _missing_mask(item):
    del item["lobe"]
    return None, "missing key 'lobe'"


BAD = [
    _garbage, _missing_image, _two_d, _four_d, _nan, _inf, _mask_shape, _mask_affine, _lobe_range, _airway_range,
    _vessel_fraction, _empty_report, _empty_report_file, _missing_mask,
]  # fmt: skip


@pytest.mark.parametrize("spoil", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_each_bad_input_gets_a_clear_error_naming_case_and_file(tmp_path, spoil):
    item = write_case(tmp_path, name="bad_case")
    key, message = spoil(item)
    with pytest.raises(RuntimeError) as info:
        build_preprocessing(spacing=None, size=N)(dict(item))
    error = info.value.__cause__
    assert isinstance(error, DataError), f"expected a DataError, got {error!r}"
    text = str(error)
    assert text.startswith("case bad_case:")
    assert "\n" not in text
    if key is not None:
        assert Path(item[key]).name in text
    assert re.search(message, text), text


def test_scan_reports_every_bad_case_at_once_and_cli_exit_status(tmp_path, capsys):
    good = write_case(tmp_path, name="good")
    items, expected = [good], {}
    for spoil in BAD:
        item = write_case(tmp_path, name=spoil.__name__.strip("_"))
        expected[item["id"]] = spoil(item)[1]
        items.append(item)
    datalist = write_json(tmp_path / "datalist.json", {"training": items[:8], "validation": items[8:]})
    report = scan_dataset(datalist)
    assert report.cases == len(BAD) + 1
    by_case = {name.split()[-1]: [str(p) for p in report.problems if p.case == name] for name in report.bad_cases}
    assert set(by_case) == set(expected)  # every bad case, and the good one is not there
    for name, message in expected.items():
        assert any(re.search(message, line) for line in by_case[name]), (name, by_case[name])
    assert scan_main(["--datalist", str(datalist)]) == 1
    printed = capsys.readouterr().out
    assert f"{len(BAD) + 1} case(s) scanned, {len(BAD)} bad" in printed and "validation[" in printed
    clean = write_json(tmp_path / "clean.json", {"training": [good]})
    assert scan_main(["--datalist", str(clean), "--dataset_dir", str(tmp_path)]) == 0


def test_scan_header_only_skips_voxels_and_allows_missing_masks(tmp_path):
    item = write_case(tmp_path, name="nan_case")
    _nan(item)
    del item["vessel"]
    datalist = {"training": [item]}
    assert scan_dataset(datalist, tmp_path, voxels=False, allow_missing_masks=True).ok
    problems = scan_dataset(datalist, tmp_path, allow_missing_masks=True).problems
    assert [p.problem for p in problems] == ["'image' holds 1 NaN/inf voxel(s); repair or drop the volume"]


def test_datalist_resolves_paths_and_lists_all_problems(tmp_path):
    item = write_case(tmp_path, name="c0")
    relative = {**item, "image": "c0/image.nii.gz", "lobe": None, "report_file": "c0/report.txt"}
    del relative["report"]
    (tmp_path / "c0" / "report.txt").write_text("Findings: none.")
    path = write_json(tmp_path / "lists" / "datalist.json", {"training": [relative], "validation": []})
    loaded = load_datalist(path, tmp_path, allow_missing_masks=True)
    assert loaded[0]["image"] == str(tmp_path / "c0" / "image.nii.gz")
    assert loaded[0]["airway"] == item["airway"]  # absolute path kept
    assert "lobe" not in loaded[0] and loaded[0]["id"] == "c0"
    out = build_preprocessing(spacing=None, size=N, allow_missing_masks=True)(loaded[0])
    assert out["report"] == "Findings: none." and out["channel_mask"].tolist() == [1.0, 0.0, 1.0, 1.0]

    bad = [
        {"lobe": "c0/lobe.nii.gz", "report": "x"},
        {**item, "image": "c0/nowhere.nii.gz", "report": ""},
        "not an item",
    ]
    path = write_json(tmp_path / "bad.json", {"training": bad})
    with pytest.raises(DataError) as info:
        load_datalist(path, tmp_path)
    lines = str(info.value).splitlines()
    assert "6 problem(s) in section 'training'" in lines[0]
    assert lines[1:] == [
        "  case training[0]: missing key 'image' (path of the CT volume)",
        "  case training[0]: missing key 'airway'; add the mask path or allow missing masks (text-only)",
        "  case training[0]: missing key 'vessel'; add the mask path or allow missing masks (text-only)",
        "  case training[1] c0: report is empty; give the report text",
        f"  case training[1] c0: {tmp_path / 'c0' / 'nowhere.nii.gz'}: 'image' file not found; check the path and the "
        "dataset root",
        "  case training[2]: item must be a JSON object, got str",
    ]
    with pytest.raises(DataError, match="no section 'testing'; sections present: \\['training'\\]"):
        load_datalist(path, tmp_path, section="testing")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        load_datalist(tmp_path / "broken.json")
    assert json.loads(path.read_text())["training"][2] == "not an item"
