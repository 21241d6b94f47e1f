"""Writing outputs safely: atomic files, no silent overwrites, NIfTI with a true RAS affine.

Every file the bundle writes (volumes, JSON sidecars, datalists, checkpoints) goes through :func:`atomic_path`:
it is written under a temporary name in the target folder and renamed into place, so a killed process never
leaves a half-written file under the final name, and an existing file is kept unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


class OutputExistsError(FileExistsError):
    """Raised instead of silently replacing an existing output."""


def _default_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the ordinary permissions the user's umask gives
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _suffixes(path: Path) -> str:
    # keep a double suffix such as ".nii.gz" so writers that pick the format from the name still see it
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


OVERWRITE_FIX = "pass overwrite=True (CLI: --overwrite) to replace it"


def refuse_existing(
    paths: str | os.PathLike | Sequence[str | os.PathLike], overwrite: bool = False, fix: str = OVERWRITE_FIX
) -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that exists, unless ``overwrite``.

    Call it before the work that makes the outputs (minutes of sampling, a forward pass), so a refused run costs
    nothing; ``fix`` is the second half of the message (how to go on).
    """
    if overwrite:
        return
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        if Path(path).exists():
            raise OutputExistsError(f"{path} already exists; {fix}")


TEMPORARY_MARK = ".tmp"


def _temporary_glob(name: str | None) -> str:
    # atomic_path names its temporaries ".<final name>.<random>.tmp<suffix>"
    return f".{name}.*{TEMPORARY_MARK}*" if name else f".*{TEMPORARY_MARK}*"


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove what interrupted atomic writes left in ``folder``: the temporaries of the file ``name``, or of every
    file when ``name`` is None; returns the removed paths.

    A killed process cannot remove its temporary file, so the next run of the same job calls this for the files it
    owns (a checkpoint folder, a sample's files) before writing them again. Never call it on a folder another live
    process is writing into.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.glob(_temporary_glob(name))):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
        elif path.is_dir():  # a folder written whole, then renamed (a DICOM series)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


_BOM = b"\xef\xbb\xbf"


def read_utf8_text(path: str | os.PathLike, error: type[Exception] = ValueError) -> str:
    """The text of a user's file (reports, prompts, datalists, CSVs), which must be UTF-8 (a byte-order mark is
    dropped).

    A byte that is not UTF-8 is refused with its offset rather than replaced: a silently altered report would
    condition the model on other text than the user wrote. The whole file is read at once, so the offset counts from
    its start (a streamed reader's would count from its buffer).

    Raises:
        error: (the caller's exception type) naming the file, the offset and value of the first bad byte, and the fix.
    """
    data = Path(path).read_bytes()
    # the mark is dropped by hand, not by the "utf-8-sig" codec, whose error offsets would not count its 3 bytes
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        raise error(f"{path}: byte {offset} (0x{data[offset]:02x}) is not UTF-8; save the file as UTF-8") from None


def check_output_folder(folder: str | os.PathLike, option: str = "output_dir") -> Path:
    """Make sure ``folder`` is (or can be made) a writable folder, before any compute; returns it.

    Raises:
        NotADirectoryError: it, or a parent of it, is a file.
        PermissionError: it cannot be created or written into.
    """
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(f"--{option} {folder}: {part} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(
            f"--{option} {folder}: cannot write there ({err.strerror}); give a writable folder"
        ) from None
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    Args:
        path: final file path; its folder is created when missing.
        overwrite: replace an existing file. When False an existing file raises :class:`OutputExistsError`
            before anything is written.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMPORARY_MARK}{_suffixes(path)}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def json_text(obj: Any) -> str:
    """``obj`` as the bundle writes JSON: 4-space indentation (the model zoo's), keys in order, UTF-8 text.

    A NaN or infinite number (a measure that could not be taken) is written as ``null``: Python's ``NaN`` and
    ``Infinity`` are not JSON, and other readers refuse the file.
    """
    return json.dumps(_finite(obj), indent=4, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _finite(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = False) -> Path:
    """Write ``obj`` as :func:`json_text` atomically and return the path."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json_text(obj), encoding="utf-8")
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write UTF-8 text atomically and return the path."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def ras_affine(spacing: Sequence[float], shape: Sequence[int], centre: bool = True) -> np.ndarray:
    """A 4×4 RAS affine for an array indexed (x, y, z) with the given voxel spacing in mm.

    Args:
        spacing: voxel size (sx, sy, sz) in mm, all positive.
        shape: array shape (nx, ny, nz); used to put the volume's centre at the world origin.
        centre: when False the first voxel sits at the origin.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"spacing must be three positive numbers in mm, got {spacing.tolist()}")
    affine = np.diag([*spacing, 1.0])
    if centre:
        affine[:3, 3] = -spacing * (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    return affine


_NIFTI_DTYPES = {"int16": np.int16, "uint8": np.uint8, "float32": np.float32}


def write_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    dtype: str = "float32",
    overwrite: bool = False,
    description: str = "",
) -> Path:
    """Write a 3D array as NIfTI-1 with the given affine (sform and qform set, units mm), atomically.

    Args:
        path: output file, ``.nii`` or ``.nii.gz``.
        array: (X, Y, Z) array in the orientation the affine describes.
        affine: 4×4 voxel-to-world (RAS, mm) matrix.
        dtype: on-disk type: ``int16`` for HU images, ``uint8`` for label maps, ``float32`` otherwise.
            Values are rounded and range-checked for integer types rather than wrapped.
        overwrite: replace an existing file.
        description: stored in the header's 80-character ``descrip`` field (e.g. "synthetic MedSyn-MONAI").
    """
    if dtype not in _NIFTI_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_NIFTI_DTYPES)}, got {dtype!r}")
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_nifti takes a 3D array, got shape {array.shape} for {path}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape} for {path}")
    target = np.dtype(_NIFTI_DTYPES[dtype])
    if target.kind in "iu":
        info = np.iinfo(target)
        rounded = np.rint(array) if array.dtype.kind == "f" else array
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(f"{path}: array holds NaN or inf; cannot store as {dtype}")
        if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
            raise ValueError(f"{path}: values [{rounded.min()}, {rounded.max()}] do not fit {dtype}")
        data = rounded.astype(target)
    else:
        data = array.astype(target)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_sform(affine, code=1)  # scanner-anatomical world coordinates
    image.header.set_qform(affine, code=1)
    image.header.set_slope_inter(1.0, 0.0)
    if description:
        image.header["descrip"] = description[:79].encode("ascii", "replace")
    with atomic_path(path, overwrite) as tmp:
        nib.save(image, str(tmp))
    return Path(path)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as (array, affine); a one-line error names an unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        image = nib.load(str(path))
        return np.asanyarray(image.dataobj), image.affine
    except Exception as err:  # nibabel raises many types for a damaged file
        raise ValueError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from None
