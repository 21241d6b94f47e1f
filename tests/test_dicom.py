"""DICOM in and out, read back with the real readers: pydicom, highdicom, MONAI's PydicomReader, and Debian's
dicom3tools validator ``dciodvfy`` where it is installed.

A phantom sample on an anisotropic grid (1.2 x 0.9 x 1.5 mm, its own origin) is written with ``output_format="both"``
and every DICOM file is compared with the NIfTI written beside it, voxel by voxel in world coordinates.
"""

import shutil
import subprocess
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from scripts.conventions import CHANNELS, MEDSYN_MONAI
from scripts.data.datalist import check_item
from scripts.data.dicom import SEGMENTS, SYNTHETIC_PATIENT_NAME, read_series, write_ct_series
from scripts.data.transforms import build_channel_preprocessing
from scripts.data.validation import read_header
from scripts.inference.segmentation import segmentation_datalist
from scripts.inference.writer import SampleWriter
from scripts.phantom import generate_case

AFFINE = np.array([[1.2, 0, 0, -20.0], [0, 0.9, 0, -14.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _network_volume(case) -> torch.Tensor:
    ras = [MEDSYN_MONAI.encode("ct", case.ct_hu.astype(np.float32))]
    ras += [MEDSYN_MONAI.encode(name, getattr(case, name).astype(np.float32)) for name in CHANNELS[1:]]
    return torch.from_numpy(np.ascontiguousarray(MEDSYN_MONAI.to_network(np.stack(ras)), dtype=np.float32))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    writer = SampleWriter(root, output_format="both", png=False)
    volume = _network_volume(generate_case(32, seed=1, findings="normal"))
    paths = writer.write("case_seed1", volume, {"prompt": "a report", "prompt_id": "p0"}, AFFINE)
    other = writer.write("case_seed2", volume, {"prompt": "a report", "prompt_id": "p0"}, AFFINE)
    nifti = {name: nib.load(str(paths[name])) for name in CHANNELS}
    return SimpleNamespace(root=root, paths=paths, other=other, nifti=nifti)


def _slices(folder):
    """The series as pydicom reads it, sorted along the slice normal (independently of scripts.data.dicom)."""
    slices = [pydicom.dcmread(str(p)) for p in sorted(folder.iterdir())]
    normal = np.cross(*np.reshape(np.asarray(slices[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(slices, key=lambda ds: float(normal @ np.asarray(ds.ImagePositionPatient, float)))


def _world_lps(ds, rows, cols):
    """LPS mm of pixels (row, column) of one slice, from its image plane attributes."""
    row_dir, col_dir = np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    origin = np.asarray(ds.ImagePositionPatient, float)
    return origin + cols[..., None] * col_spacing * row_dir + rows[..., None] * row_spacing * col_dir


def _nifti_index(image, lps_points):
    """Voxel indices of the NIfTI image at LPS points; they must fall on voxel centres."""
    ras = lps_points * np.array([-1.0, -1.0, 1.0])
    index = (np.linalg.inv(image.affine) @ np.c_[ras.reshape(-1, 3), np.ones(ras.size // 3)].T)[:3].T
    np.testing.assert_allclose(index, np.rint(index), atol=1e-4)
    return tuple(np.rint(index).astype(int).T)


def test_ct_series_holds_the_nifti_voxels_in_the_same_world_places(sample):
    slices = _slices(sample.paths["ct_dicom"])
    ct = np.asarray(sample.nifti["ct"].dataobj)
    assert len(slices) == ct.shape[2]
    rows, cols = np.meshgrid(np.arange(slices[0].Rows), np.arange(slices[0].Columns), indexing="ij")
    for ds in slices:
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu.ravel(), ct[_nifti_index(sample.nifti["ct"], _world_lps(ds, rows, cols))])
    first = slices[0]
    assert (first.Rows, first.Columns) == (ct.shape[1], ct.shape[0])
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [0.9, 1.2])
    assert float(first.SliceThickness) == pytest.approx(1.5)
    assert list(first.ImageOrientationPatient) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # columns to left, rows posterior
    assert first.pixel_array.dtype == np.int16 and first.RescaleType == "HU"
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, 0.0)


def test_every_file_says_it_is_synthetic_and_each_sample_has_new_uids(sample):
    slices = _slices(sample.paths["ct_dicom"])
    seg = pydicom.dcmread(str(sample.paths["seg_dicom"]))
    for ds in (slices[0], seg):
        assert str(ds.PatientName) == SYNTHETIC_PATIENT_NAME and ds.PatientID.startswith("SYNTHETIC-")
        assert "SYNTHETIC" in ds.SeriesDescription and "depicts no patient" in ds.DerivationDescription
        assert ds.ImageType[0] == "DERIVED"
    assert len({ds.SOPInstanceUID for ds in slices}) == len(slices)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({getattr(ds, key) for ds in slices}) == 1
    assert seg.StudyInstanceUID == slices[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != slices[0].SeriesInstanceUID
    other = _slices(sample.other["ct_dicom"])[0]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert getattr(other, key) != getattr(slices[0], key)


def test_segmentation_reads_back_with_highdicom_on_the_nifti_masks(sample):
    seg = hd.seg.segread(str(sample.paths["seg_dicom"]))
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == len(SEGMENTS)
    referenced = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == _slices(sample.paths["ct_dicom"])[0].SeriesInstanceUID
    for item, (label, (code, _), modifier) in zip(seg.SegmentSequence, SEGMENTS.values()):
        assert item.SegmentLabel == label and item.SegmentedPropertyTypeCodeSequence[0].CodeValue == code
        modifiers = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [m.CodeValue for m in modifiers] == ([modifier[0]] if modifier else [])
    volume = seg.get_volume(combine_segments=False)  # (slices, rows, columns, segments), LPS affine
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in volume.array.shape[:3]), indexing="ij"), axis=-1)
    lps = (volume.affine @ np.c_[grid.reshape(-1, 3), np.ones(grid[..., 0].size)].T)[:3].T
    index = _nifti_index(sample.nifti["lobe"], lps)
    lobe = np.asarray(sample.nifti["lobe"].dataobj)[index]
    expected = [lobe == v for v in range(1, 6)]
    expected += [np.asarray(sample.nifti[name].dataobj)[index] > 0 for name in ("airway", "vessel")]
    for segment, mask in enumerate(expected):
        np.testing.assert_array_equal(volume.array[..., segment].ravel() > 0, mask)
    assert sum(m.sum() for m in expected[:5]) > 0 and expected[5].sum() > 0


def test_series_reads_back_through_the_bundle_and_monai_readers(sample):
    array, affine, shape = read_series(sample.paths["ct_dicom"])
    assert read_header(sample.paths["ct_dicom"]) == (shape, pytest.approx(affine))
    ct = sample.nifti["ct"]
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    lps = (LPS @ affine @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    np.testing.assert_array_equal(array.reshape(-1), np.asarray(ct.dataobj)[_nifti_index(ct, lps)])
    # --image / --lobe: the same volumes on the model grid from DICOM as from NIfTI (MONAI's PydicomReader)
    lobe_series = write_ct_series(sample.root / "lobe_dicom", np.asarray(sample.nifti["lobe"].dataobj), AFFINE, "X", "")
    assert len(lobe_series) == 32
    chain = build_channel_preprocessing(["image", "lobe"], (2.0, 2.0, 2.0), 16, "pad_crop")
    from_dicom = chain({"image": str(sample.paths["ct_dicom"]), "lobe": str(sample.root / "lobe_dicom")})
    from_nifti = chain({"image": str(sample.paths["ct"]), "lobe": str(sample.paths["lobe"])})
    for key in ("image", "lobe"):
        torch.testing.assert_close(from_dicom[key], from_nifti[key])
        np.testing.assert_allclose(from_dicom[key].affine.numpy(), from_nifti[key].affine.numpy(), atol=1e-5)


def test_dicom_folders_are_accepted_as_volumes_and_other_folders_refused(sample, tmp_path):
    assert segmentation_datalist(image=sample.paths["ct_dicom"]) == [{"image": str(sample.paths["ct_dicom"])}]
    (tmp_path / "empty").mkdir()
    problems = check_item({"image": str(tmp_path / "empty")}, "case", True, check_files=True, check_report=False)
    assert [p.problem for p in problems] == [
        "'image' is a folder without DICOM files; give a NIfTI file or a DICOM series folder"
    ]
    with pytest.raises(FileNotFoundError, match="no such file or DICOM series folder"):
        segmentation_datalist(image=tmp_path / "empty")
    mixed = tmp_path / "mixed"
    shutil.copytree(sample.paths["ct_dicom"], mixed)
    shutil.copy(next(sample.other["ct_dicom"].iterdir()), mixed / "other.dcm")
    with pytest.raises(ValueError, match="2 series in one folder"):
        read_header(mixed)


def test_writer_keeps_formats_apart_and_refuses_unknown_ones(sample, tmp_path):
    with pytest.raises(ValueError, match="--output_format must be one of nifti, dicom, both"):
        SampleWriter(tmp_path, output_format="dcm")
    dicom_only = SampleWriter(tmp_path, output_format="dicom", png=False)
    assert sorted(dicom_only.paths("a")) == ["ct_dicom", "json", "seg_dicom"]
    volume = _network_volume(generate_case(32, seed=2, findings="normal"))
    paths = dicom_only.write("a", volume, {"prompt": None}, AFFINE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a_ct_dicom", "a_seg.dcm"]
    assert dicom_only.plan("a", {"prompt": None}) == "skip"
    again = SampleWriter(tmp_path, output_format="dicom", png=False, overwrite=True)
    again.write("a", volume, {"prompt": None}, AFFINE)  # the old series folder is replaced, not mixed
    assert len(list(paths["ct_dicom"].iterdir())) == 32


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_or_warning(sample):
    """The DICOM standard's IOD checks (David Clunie's dicom3tools): CT Image and Segmentation."""
    for path in (next(sample.paths["ct_dicom"].iterdir()), sample.paths["seg_dicom"]):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith(("Error", "Warning"))]
        assert not lines, f"{path.name}: {lines}"
