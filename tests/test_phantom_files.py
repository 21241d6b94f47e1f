"""Phantom datasets on disk: layout, dtypes, affine, byte-identical reruns, overwrite refusal, argument errors."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from scripts.data.io import OutputExistsError
from scripts.phantom import FOV_MM, FindingSpec, generate_case, write_dataset
from scripts.phantom.__main__ import main

TRUTH_KEYS = {
    "id",
    "seed",
    "size",
    "spacing_mm",
    "fov_mm",
    "findings",
    "effusion_ml",
    "cardiothoracic_ratio",
    "laa950_percent",
    "lung_volume_ml",
    "airway_volume_mm3",
    "vessel_volume_ml",
    "heart_width_mm",
    "thorax_width_mm",
    "synthetic",
    "generator",
}
ITEM_KEYS = {"id", "image", "lobe", "airway", "vessel", "report", "report_file", "truth"}


def _digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    datalist = write_dataset(out, num=3, size=32, seed=7, val_fraction=0.34)
    return out, datalist


def test_layout_datalist_and_truth(dataset):
    out, datalist = dataset
    data = json.loads(datalist.read_text())
    assert len(data["training"]) == 2 and len(data["validation"]) == 1
    for item in data["training"] + data["validation"]:
        assert set(item) == ITEM_KEYS
        for key in ("image", "lobe", "airway", "vessel", "report_file", "truth"):
            assert not item[key].startswith("/") and (out / item[key]).is_file()
        assert item["report"] == (out / item["report_file"]).read_text()
        truth = json.loads((out / item["truth"]).read_text())
        assert TRUTH_KEYS <= set(truth)
        assert truth["id"] == item["id"] and truth["synthetic"] is True
        assert truth["generator"].startswith("scripts.phantom ")
        assert set(truth["effusion_ml"]) == {"left", "right"}
        assert set(truth["lung_volume_ml"]) == {"left", "right", "total"}
        # the recorded seed regenerates the case
        again = generate_case(truth["size"], truth["seed"], FindingSpec.parse(truth["findings_request"]))
        assert again.truth["cardiothoracic_ratio"] == truth["cardiothoracic_ratio"]


def test_volumes_have_dtypes_and_true_ras_affine(dataset):
    out, datalist = dataset
    item = json.loads(datalist.read_text())["training"][0]
    spacing = FOV_MM / 32
    for key, dtype in (("image", np.int16), ("lobe", np.uint8), ("airway", np.uint8), ("vessel", np.uint8)):
        image = nib.load(str(out / item[key]))
        assert image.get_data_dtype() == dtype and image.shape == (32, 32, 32)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        np.testing.assert_allclose(image.header.get_zooms(), (spacing,) * 3)
    lobe = np.asanyarray(nib.load(str(out / item["lobe"])).dataobj)
    assert lobe.max() == 5 and lobe.min() == 0
    for key in ("airway", "vessel"):
        assert set(np.unique(np.asanyarray(nib.load(str(out / item[key])).dataobj))) <= {0, 1}
    # truth is measured on the written arrays
    truth = json.loads((out / item["truth"]).read_text())
    ct = np.asanyarray(nib.load(str(out / item["image"])).dataobj)
    laa = 100 * ((ct < -950) & (lobe > 0)).sum() / (lobe > 0).sum()
    assert laa == pytest.approx(truth["laa950_percent"], abs=1e-2)
    airway = np.asanyarray(nib.load(str(out / item["airway"])).dataobj)
    assert airway.sum() * spacing**3 == pytest.approx(truth["airway_volume_mm3"], rel=1e-6)


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    write_dataset(tmp_path / "again", num=3, size=32, seed=7, val_fraction=0.34)
    assert _digests(out) == _digests(tmp_path / "again")
    write_dataset(tmp_path / "other", num=1, size=32, seed=8)
    first = "case_0000/ct.nii.gz"
    assert _digests(tmp_path / "other")[first] != _digests(out)[first]


def test_existing_output_is_refused_unless_overwrite(dataset, tmp_path):
    out, _ = dataset
    before = _digests(out)
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_dataset(out, num=3, size=32, seed=8)
    assert _digests(out) == before
    assert main(["--out", str(out), "--num", "1", "--size", "32", "--quiet"]) == 2
    assert _digests(out) == before
    small = tmp_path / "small"
    assert (
        main(
            [
                "--out",
                str(small),
                "--num",
                "1",
                "--size",
                "32",
                "--seed",
                "1",
                "--quiet",
                "--findings",
                "effusion:left:large",
            ]
        )
        == 0
    )
    truth = json.loads((small / "case_0000/truth.json").read_text())
    assert (
        main(
            [
                "--out",
                str(small),
                "--num",
                "1",
                "--size",
                "32",
                "--seed",
                "2",
                "--quiet",
                "--overwrite",
                "--findings",
                "normal",
            ]
        )
        == 0
    )
    assert json.loads((small / "case_0000/truth.json").read_text())["seed"] != truth["seed"]


@pytest.mark.parametrize("size", [50, 16, 1024, "64", 64.0])
def test_bad_size_is_one_line_error(size):
    with pytest.raises(ValueError, match="multiple of 8") as err:
        generate_case(size, 0, "normal")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("efusion:right", "expected one of effusion"),
        ("effusion:up", "cannot read 'up'"),
        ("effusion:right:huge", "cannot read 'huge'"),
        ("cardiomegaly:left", "takes no side"),
        ("nodule:bilateral", "two items"),
        ("effusion:right,effusion:bilateral", "twice"),
        ("normal,effusion", "stand alone"),
    ],
)
def test_bad_finding_spec_is_one_line_error(spec, match):
    with pytest.raises(ValueError, match=match) as err:
        FindingSpec.parse(spec)
    assert "\n" not in str(err.value)


def test_finding_spec_grammar():
    spec = FindingSpec.parse("effusion:right:large, cardiomegaly:severe, nodule:rml")
    kinds = [(f.type, f.side, f.severity, f.lobe) for f in spec.findings]
    assert kinds == [
        ("effusion", "right", "large", None),
        ("cardiomegaly", None, "large", None),
        ("nodule", "right", None, 4),
    ]
    assert FindingSpec.parse("normal").findings == () and not FindingSpec.parse("none").random
    assert FindingSpec.parse(None).random and FindingSpec.parse("random").random


def test_cli_rejects_bad_arguments_with_a_message(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--size", "60"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--findings", "pneumonia"]) == 2
    assert "expected one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
