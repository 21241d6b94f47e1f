"""Safe output writing: atomic, no silent overwrite, NIfTI with the true affine and the asked-for dtype."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.data.io import OutputExistsError, atomic_path, ras_affine, read_nifti, write_json, write_nifti


def test_nifti_keeps_affine_dtype_and_values(tmp_path):
    affine = ras_affine((0.8, 0.8, 1.5), (4, 5, 6))
    hu = np.linspace(-1024, 600, 120).reshape(4, 5, 6)
    path = write_nifti(tmp_path / "ct.nii.gz", hu, affine, dtype="int16", description="synthetic")
    image = nib.load(str(path))
    assert image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.8, 1.5))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert image.header.get_xyzt_units()[0] == "mm"
    assert b"synthetic" in image.header["descrip"].tobytes()
    array, _ = read_nifti(path)
    np.testing.assert_array_equal(array, np.rint(hu).astype(np.int16))
    # the centre of the volume is at the world origin
    centre = affine @ np.array([1.5, 2.0, 2.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_existing_output_is_never_silently_replaced(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": 1})
    assert path.stat().st_mode & 0o044  # readable by others as with open(), not mkstemp's 0600
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_json(path, {"x": 2})
    assert path.read_text().strip().endswith("}") and '"x": 1' in path.read_text()
    write_json(path, {"x": 2}, overwrite=True)
    assert '"x": 2' in path.read_text()


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "half.nii.gz") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "array, dtype, message",
    [
        (np.zeros((2, 2)), "uint8", "3D array"),
        (np.full((2, 2, 2), 300.0), "uint8", "do not fit uint8"),
        (np.full((2, 2, 2), np.nan), "int16", "NaN"),
        (np.zeros((2, 2, 2)), "int64", "dtype must be"),
    ],
)
def test_bad_arrays_get_clear_errors(tmp_path, array, dtype, message):
    with pytest.raises(ValueError, match=message):
        write_nifti(tmp_path / "x.nii.gz", array, np.eye(4), dtype=dtype)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        read_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="bad.nii.gz: cannot read as NIfTI"):
        read_nifti(bad)
    with pytest.raises(ValueError, match="spacing"):
        ras_affine((1, 0, 1), (2, 2, 2))


def test_output_folder_is_checked_before_any_work(tmp_path):
    from scripts.data.io import check_output_folder

    assert check_output_folder(tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "sub", "out")
    if Path("/sys").is_dir():  # a folder no process may create (root included)
        with pytest.raises(PermissionError, match="--output_dir /sys/medsyn_test: cannot write there"):
            check_output_folder("/sys/medsyn_test")


def test_stale_temporaries_of_a_file_are_removed_and_others_kept(tmp_path):
    from scripts.data.io import remove_stale_temporaries

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            left = tmp_path / "left.tmp.nii.gz"
            left.write_bytes(b"x")  # a process killed here could not have removed it
            raise RuntimeError
    stale = [tmp_path / ".a.nii.gz.k2j3.tmp.nii.gz", tmp_path / ".b.json.zz.tmp.json"]
    for path in stale:
        path.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path, "a.nii.gz") == [stale[0]]
    assert stale[1].exists() and remove_stale_temporaries(tmp_path) == [stale[1]]
    assert (tmp_path / "left.tmp.nii.gz").exists()  # not a temporary of atomic_path: kept
