"""CT-RATE adapter on a tiny fake CT-RATE tree: patient-level split, HU rescale, spacing, reports, problems."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scripts import conventions as cv
from scripts.data.ctrate import VolumeName, build_ctrate_datalist, join_report, main, split_patients
from scripts.data.datalist import DataError, load_datalist
from scripts.data.io import ras_affine, write_nifti
from scripts.data.transforms import build_preprocessing

HU = np.arange(8**3).reshape(8, 8, 8) * 2 - 500  # even HU values, all inside the window
ON_DISK = [
    "train_1_a_1", "train_1_a_2", "train_2_a_1", "train_2_a_2", "train_3_a_1", "train_4_a_1", "train_4_b_1",
    "train_5_a_1", "train_6_a_1", "valid_1_a_1",
]  # fmt: skip
SLOPE = {"train_2_a_2": 2.0}  # the others store HU + 1024 (slope 1, intercept -1024)


def make_ctrate(root: Path) -> dict[str, Path]:
    """Volumes nested as CT-RATE ships them, with a wrong header spacing (1 mm); CSVs; masks for one volume."""
    for name in ON_DISK:
        split, patient, scan, _ = name.split("_")
        folder = root / "data" / split / f"{split}_{patient}" / f"{split}_{patient}_{scan}"
        raw = (HU + 1024) / SLOPE.get(name, 1.0)
        write_nifti(folder / f"{name}.nii.gz", raw, ras_affine((1.0, 1.0, 1.0), raw.shape), dtype="int16")
    reports = root / "reports.csv"
    with reports.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
        for name in ON_DISK + ["train_9_a_1"]:  # train_9: in the CSV, not on disk
            if name == "train_5_a_1":
                continue  # on disk, no report
            findings = "" if name == "train_3_a_1" else f"Lungs of {name}\n are clear."
            impression = "" if name == "train_6_a_1" else "No acute finding."
            if name == "train_6_a_1":
                findings = "nan"
            writer.writerow([f"{name}.nii.gz", findings, impression])
    metadata = root / "metadata.csv"
    with metadata.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"])
        for name in ON_DISK:
            writer.writerow([f"{name}.nii.gz", SLOPE.get(name, 1.0), -1024.0, "[0.7, 0.7]", 1.5])
    masks = root / "data" / "masks"  # inside the CT-RATE folder: its files must not count as volumes
    for key in cv.MASK_KEYS:
        write_nifti(masks / key / "train_1_a_1.nii.gz", HU > 0, ras_affine((1.0,) * 3, HU.shape), dtype="uint8")
    return {"ctrate_dir": root / "data", "reports": reports, "metadata": metadata, "masks_dir": masks}


USABLE = {"train_1_a_1", "train_1_a_2", "train_2_a_1", "train_2_a_2", "train_3_a_1", "train_4_a_1", "train_4_b_1",
          "valid_1_a_1"}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_is_by_patient_and_keeps_reconstructions_together(tmp_path, seed):
    paths = make_ctrate(tmp_path)
    datalist, _ = build_ctrate_datalist(
        paths["ctrate_dir"], paths["reports"], paths["metadata"], val_fraction=0.4, seed=seed
    )
    train, val = datalist["training"], datalist["validation"]
    assert {i["id"] for i in train + val} == USABLE and len(train + val) == len(USABLE)
    assert not {i["patient"] for i in train} & {i["patient"] for i in val}
    assert len({i["patient"] for i in val}) == 2  # round(0.4 × 5 patients)
    sections = {i["id"]: s for s, items in datalist.items() for i in items}
    assert sections["train_1_a_1"] == sections["train_1_a_2"] and sections["train_4_a_1"] == sections["train_4_b_1"]


def test_items_carry_report_rescale_spacing_and_relative_paths(tmp_path):
    paths = make_ctrate(tmp_path)
    datalist, problems = build_ctrate_datalist(
        paths["ctrate_dir"], paths["reports"], paths["metadata"], paths["masks_dir"], official_split=True
    )
    assert [i["id"] for i in datalist["validation"]] == ["valid_1_a_1"]
    items = {i["id"]: i for s in datalist.values() for i in s}
    first = items["train_1_a_1"]
    assert first["image"] == "train/train_1/train_1_a/train_1_a_1.nii.gz" and first["patient"] == "train_1"
    assert first["report"] == "Findings: Lungs of train_1_a_1 are clear. Impression: No acute finding."
    assert items["train_3_a_1"]["report"] == "Impression: No acute finding."
    assert (first["rescale_slope"], first["rescale_intercept"], first["spacing"]) == (1.0, -1024.0, [0.7, 0.7, 1.5])
    assert items["train_2_a_2"]["rescale_slope"] == 2.0
    assert first["lobe"] == "masks/lobe/train_1_a_1.nii.gz" and "lobe" not in items["train_1_a_2"]
    by_case = {}
    for p in problems:
        by_case.setdefault(p.case, []).append(p.problem)
    assert "listed in the reports CSV but not found" in by_case["train_9_a_1"][0]
    assert "on disk but not in" in by_case["train_5_a_1"][0]
    assert "Findings_EN and Impressions_EN are empty" in by_case["train_6_a_1"][0]
    assert by_case["train_1_a_2"] == [f"no '{k}' mask; the volume is kept without it" for k in cv.MASK_KEYS]
    assert "train_1_a_1" not in by_case


def test_pipeline_reaches_hu_with_slope_intercept_and_metadata_spacing(tmp_path):
    paths = make_ctrate(tmp_path)
    out = tmp_path / "datalist.json"
    assert main([f"--{k}={v}" for k, v in paths.items()] + [f"--out={out}", "--val_fraction=0"]) == 0
    items = {i["id"]: i for i in load_datalist(out, paths["ctrate_dir"], allow_missing_masks=True)}
    pipeline = build_preprocessing(spacing=None, size=8, lowres=False, allow_missing_masks=True, network_layout=False)
    for name in ("train_1_a_1", "train_2_a_2"):  # slope 1 and slope 2
        image = pipeline(items[name])["image"]
        np.testing.assert_allclose(cv.unit_to_hu(image[0]).numpy(), HU, atol=1e-3)
        np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0), (0.7, 0.7, 1.5))
    assert pipeline(items["train_1_a_1"])["channel_mask"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_cli_reports_problems_and_never_overwrites_silently(tmp_path, capsys):
    paths = make_ctrate(tmp_path)
    out = tmp_path / "datalist.json"
    args = [f"--{k}={v}" for k, v in paths.items() if k != "masks_dir"] + [f"--out={out}", "--official_split"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning: case train_9_a_1:" in captured.err and "validation 1 volume(s) of 1 patient(s)" in captured.out
    assert set(json.loads(out.read_text())) == {"training", "validation"}
    assert main(args) == 1 and "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_bad_csv_and_helpers(tmp_path):
    paths = make_ctrate(tmp_path)
    (tmp_path / "bad.csv").write_text("VolumeName,Findings\nx,y\n")
    with pytest.raises(DataError, match=r"bad.csv: missing column\(s\) \['Findings_EN', 'Impressions_EN'\]"):
        build_ctrate_datalist(paths["ctrate_dir"], tmp_path / "bad.csv", paths["metadata"])
    assert VolumeName.parse("train_12_b_3.nii.gz").patient == "train_12"
    assert VolumeName.parse("train_12_b.nii.gz") is None
    assert join_report(" a ", "NaN") == "Findings: a" and join_report(None, "") == ""
    assert split_patients(["p1", "p2", "p3"], 0.0, 0) == set()
    assert len(split_patients(["p1", "p2"], 0.9, 0)) == 1  # never all patients
    with pytest.raises(ValueError, match="val_fraction"):
        split_patients(["p1"], 1.0, 0)
