"""The batch runner: masks on the image's grid, a datalist that loads, resumability, a corrupt case reported."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from scripts.anatomy import __main__ as cli
from scripts.anatomy import batch
from scripts.anatomy.base import BACKENDS, Backend
from scripts.data.datalist import load_datalist
from scripts.data.io import ras_affine, write_nifti


class SideBackend(Backend):
    """A fast stand-in: lobe 1 on the −x half, 3 on the +x half; airway where HU < -900; vessel where HU > 0."""

    name = "side"
    structures = ("lobe", "airway", "vessel")
    calls = 0

    def _segment(self, ct_hu, spacing, structures):
        SideBackend.calls += 1
        lobe = np.zeros(ct_hu.shape, np.uint8)
        lobe[: ct_hu.shape[0] // 2] = 1
        lobe[ct_hu.shape[0] // 2 :] = 3
        return {"lobe": lobe, "airway": (ct_hu < -900).astype(np.uint8), "vessel": (ct_hu > 0).astype(np.uint8)}


@pytest.fixture
def side_backend(monkeypatch):
    monkeypatch.setitem(BACKENDS, "side", SideBackend)
    SideBackend.calls = 0
    return SideBackend


def make_dataset(root, n: int = 3, corrupt: bool = True, lps: bool = False):
    """Small CT files (one bright voxel on the patient's right, one dark on the left) and a datalist."""
    items = []
    for i in range(n):
        ct = np.full((8, 6, 5), -500.0)
        ct[6, 2, 2] = 100.0  # patient's right (+x)
        ct[1, 2, 2] = -1000.0  # patient's left
        affine = ras_affine((1.5, 1.5, 2.0), ct.shape)
        if lps and i == 0:  # store the first case flipped in x and y, with the matching affine
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            flip[:2, 3] = [ct.shape[0] - 1, ct.shape[1] - 1]
            ct, affine = ct[::-1, ::-1], affine @ flip
        write_nifti(root / f"ct_{i}.nii.gz", ct, affine, dtype="int16")
        items.append({"id": f"case_{i}", "image": f"ct_{i}.nii.gz", "report": f"Report {i}."})
    if corrupt:
        (root / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
        items.append({"id": "broken", "image": "broken.nii.gz", "report": "Broken."})
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:-1], "validation": items[-1:]}))
    return datalist


def test_batch_writes_masks_datalist_and_reports_a_corrupt_case(tmp_path, side_backend):
    data = tmp_path / "data"
    data.mkdir()
    datalist = make_dataset(data)
    out = tmp_path / "masks"
    summary = batch.make_masks(datalist, out, backend="side", progress=False)
    assert summary.count("done") == 3 and [r.id for r in summary.failed] == ["broken"]
    reason = summary.failed[0].reason
    assert "broken.nii.gz" in reason and "cannot read as NIfTI" in reason and "\n" not in reason
    assert "FAILED validation[0] broken" in summary.format()
    written = json.loads((out / "make_masks_summary.json").read_text())
    assert written["counts"] == {"done": 3, "skipped": 0, "failed": 1} and written["failed"][0]["id"] == "broken"
    # the new datalist loads with every file present; the failed case is left out
    items = load_datalist(out / "datalist.json", section="training")
    assert [i["id"] for i in items] == ["case_0", "case_1", "case_2"]
    assert json.loads((out / "datalist.json").read_text())["validation"] == []
    image = nib.load(items[0]["image"])
    for key in ("lobe", "airway", "vessel"):
        mask = nib.load(items[0][key])
        assert mask.get_data_dtype() == np.uint8 and mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine)
    assert json.loads((out / "case_0" / "masks.json").read_text())["structures"]["lobe"]["backend"] == "side"


def test_second_run_does_nothing(tmp_path, side_backend):
    datalist = make_dataset(tmp_path, corrupt=False)
    out = tmp_path / "out"
    first = batch.make_masks(datalist, out, backend="side", progress=False)
    assert first.count("done") == 3 and side_backend.calls == 3

    def stamps():  # every mask, marker and the datalist (the run summary is rewritten: it says 3 already done)
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != batch.SUMMARY_NAME}

    before = stamps()
    second = batch.make_masks(datalist, out, backend="side", progress=False, overwrite="false")  # as typed
    assert second.count("skipped") == 3 and second.count("done") == 0 and side_backend.calls == 3
    assert stamps() == before and len(before) == 3 * 4 + 1
    # an interrupted case (no marker) is redone; --overwrite redoes everything
    (out / "case_1" / batch.MARKER).unlink()
    third = batch.make_masks(datalist, out, backend="side", progress=False)
    assert third.count("done") == 1 and side_backend.calls == 4
    batch.make_masks(datalist, out, backend="side", progress=False, overwrite=True)
    assert side_backend.calls == 7


def test_masks_are_written_in_the_files_own_orientation(tmp_path, side_backend):
    datalist = make_dataset(tmp_path, n=2, corrupt=False, lps=True)
    out = tmp_path / "out"
    batch.make_masks(datalist, out, backend="side", progress=False)
    for case in ("case_0", "case_1"):  # case_0 is stored LPS, case_1 RAS: same anatomy in world space
        mask = nib.as_closest_canonical(nib.load(str(out / case / "airway.nii.gz")))
        lobe = nib.as_closest_canonical(nib.load(str(out / case / "lobe.nii.gz")))
        vessel = nib.as_closest_canonical(nib.load(str(out / case / "vessel.nii.gz")))
        assert np.argwhere(np.asarray(mask.dataobj)).tolist() == [[1, 2, 2]]
        assert np.argwhere(np.asarray(vessel.dataobj)).tolist() == [[6, 2, 2]]
        assert (np.asarray(lobe.dataobj)[:4] == 1).all() and (np.asarray(lobe.dataobj)[4:] == 3).all()


def test_rescale_and_spacing_of_ct_rate_items_are_applied(tmp_path):
    raw = np.full((4, 4, 4), 24.0)  # stored value; HU = 24 * 1 - 1024 = -1000
    write_nifti(tmp_path / "ct.nii.gz", raw, np.eye(4), dtype="int16")
    item = {"image": str(tmp_path / "ct.nii.gz"), "rescale_slope": 1.0, "rescale_intercept": -1024.0,
            "spacing": [0.7, 0.7, 1.5]}  # fmt: skip
    ct, spacing, affine, _ = batch.load_ct_ras(item)
    assert np.allclose(ct, -1000.0) and np.allclose(spacing, [0.7, 0.7, 1.5]) and np.allclose(affine, np.eye(4))


def test_classical_end_to_end_through_the_cli(tmp_path, capsys):
    from tests.test_anatomy_classical import toy_chest

    ct, spacing, *_ = toy_chest(n=48, spacing=(4.0, 4.0, 5.0))
    write_nifti(tmp_path / "chest.nii.gz", ct, ras_affine(spacing, ct.shape), dtype="int16")
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"image": "chest.nii.gz", "report": "Normal."}]}))
    args = ["--datalist", str(tmp_path / "list.json"), "--out", str(tmp_path / "out"), "--backend", "classical",
            "--no_progress"]  # fmt: skip
    assert cli.main(args) == 0
    assert "1 done" in capsys.readouterr().out
    lobe = np.asarray(nib.load(str(tmp_path / "out" / "chest" / "lobe.nii.gz")).dataobj)
    assert set(np.unique(lobe)) == {0, 1, 2, 3, 4, 5}
    assert cli.main(args) == 0 and "1 already done" in capsys.readouterr().out


def test_cli_exit_codes(tmp_path, side_backend, capsys):
    datalist = make_dataset(tmp_path)
    base = ["--datalist", str(datalist), "--out", str(tmp_path / "out"), "--no_progress"]
    assert cli.main(base + ["--backend", "side"]) == 1  # the corrupt case failed, the others finished
    assert "FAILED validation[0] broken" in capsys.readouterr().err
    assert (tmp_path / "out" / "case_2" / "masks.json").is_file()
    assert cli.main(base + ["--backend", "side", "--on_error", "stop", "--overwrite"]) == 1
    assert "case broken" in capsys.readouterr().err
    assert cli.main(["--datalist", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"), "--backend",
                     "classical"]) == 2  # fmt: skip
    assert "datalist not found" in capsys.readouterr().err


def test_bundle_config_runs_the_batch(tmp_path, side_backend):
    from pathlib import Path

    from monai.bundle import ConfigParser

    config = Path(__file__).resolve().parents[1] / "configs" / "make_masks.json"
    datalist = make_dataset(tmp_path, corrupt=False)
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"datalist": str(datalist), "output_dir": str(tmp_path / "out"), "backend": "side"})
    summary = parser.get_parsed_content("run")[0]
    assert summary.count("done") == 3 and (tmp_path / "out" / "datalist.json").is_file()
    (tmp_path / "bad").mkdir()
    make_dataset(tmp_path / "bad", corrupt=True)
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"datalist": str(tmp_path / "bad" / "datalist.json"), "output_dir": str(tmp_path / "out2"),
                   "backend": "side"})  # fmt: skip
    with pytest.raises(RuntimeError):
        parser.get_parsed_content("run")


def test_parallel_workers_give_the_same_result(tmp_path, side_backend):
    datalist = make_dataset(tmp_path)
    summary = batch.make_masks(datalist, tmp_path / "par", backend="side", workers=2, progress=False)
    assert summary.count("done") == 3 and [r.id for r in summary.failed] == ["broken"]
    serial = batch.make_masks(datalist, tmp_path / "ser", backend="side", progress=False)
    for case in ("case_0", "case_1", "case_2"):
        for key in ("lobe", "airway", "vessel"):
            a = np.asarray(nib.load(str(tmp_path / "par" / case / f"{key}.nii.gz")).dataobj)
            b = np.asarray(nib.load(str(tmp_path / "ser" / case / f"{key}.nii.gz")).dataobj)
            np.testing.assert_array_equal(a, b)
    assert serial.count("done") == 3
    assert (tmp_path / "par" / "datalist.json").read_text() == (tmp_path / "ser" / "datalist.json").read_text()
