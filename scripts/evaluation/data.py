"""Where the evaluation's volumes come from: a folder of generated volumes and a datalist of real ones.

Volumes are read one at a time (a thousand 256³ CTs do not fit in memory); every reader yields
``(id, ct_hu, spacing)`` with the CT as float32 HU indexed (x, y, z) in RAS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scripts.conventions import MASK_KEYS
from scripts.data.io import read_nifti
from scripts.evaluation.anatomy_measures import spacing_of
from scripts.text.reports import read_text_file

Item = tuple[str, np.ndarray, tuple[float, float, float]]


def synthetic_paths(folder: str | Path, pattern: str = "**/*ct.nii.gz", limit: int | None = None) -> list[Path]:
    """Generated CT files under ``folder`` matching ``pattern`` (sorted); a one-line error when there are none."""
    folder = Path(folder)
    paths = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not paths:
        raise FileNotFoundError(f"{folder}: no files match {pattern!r} (set synthetic_glob)")
    return paths[:limit] if limit else paths


def volume_id(path: Path, root: Path) -> str:
    """A readable id: the path below ``root`` without ``.nii.gz`` (``sample_0003/ct``)."""
    return str(path.relative_to(root)).removesuffix(".gz").removesuffix(".nii")


def check_ct(array: np.ndarray, path: str | Path) -> None:
    """Raise a one-line ``ValueError`` naming ``path`` when ``array`` does not look like a chest CT in HU: not one 3D
    volume, NaN or inf, a label map (few small whole numbers), or no air (nothing below -500 HU: intensities that are
    not HU, or an image of something else). Measures and distances of such a volume would be silently wrong."""
    shape = array.shape[:3] if array.ndim > 3 and all(s == 1 for s in array.shape[3:]) else array.shape
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"{path}: shape {tuple(array.shape)} is not a 3D CT volume")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: holds NaN or inf values; not a CT in HU")
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 255 and np.array_equal(array, np.round(array)) and len(np.unique(array)) <= 32:
        raise ValueError(
            f"{path}: holds the whole numbers {low:g}..{high:g} only ({array.dtype}): this looks like a label map, "
            "not a CT in HU; check the datalist's image key / synthetic_glob"
        )
    if low > -500:
        raise ValueError(
            f"{path}: values {low:g}..{high:g} have no air (nothing below -500 HU): not a chest CT in HU; "
            "convert the intensities to HU (rescale slope / intercept) or check the file"
        )


def read_ct(path: str | Path, check: bool = True) -> tuple[np.ndarray, tuple[float, float, float]]:
    """CT (float32 HU) and spacing (mm) of one NIfTI file, checked by :func:`check_ct` (unless ``check`` is off: toy
    volumes of tests)."""
    array, affine = read_nifti(path)
    array = np.asarray(array)
    if check:
        check_ct(array, path)
    # a (X, Y, Z, 1) file passes the check; the measures and networks take the 3D volume
    return array.reshape(array.shape[:3]).astype(np.float32, copy=False), spacing_of(affine)


def iter_synthetic(folder: str | Path, pattern: str = "**/*ct.nii.gz", limit: int | None = None) -> Iterator[Item]:
    root = Path(folder)
    for path in synthetic_paths(root, pattern, limit):
        yield (volume_id(path, root), *read_ct(path))


def datalist_items(datalist: str | Path, split: str, limit: int | None = None) -> list[dict]:
    """Items of one split of a datalist (``{"training": [...], "validation": [...]}``), paths made absolute."""
    datalist = Path(datalist)
    if not datalist.is_file():
        raise FileNotFoundError(f"{datalist}: no such datalist; set real_datalist (--real_datalist) to a datalist JSON")
    try:
        content = json.loads(datalist.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{datalist}: not a JSON datalist ({err})") from None
    if not isinstance(content, dict) or split not in content:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{datalist}: no split {split!r} (it has {found}); set real_split / training_split")
    items = []
    for k, item in enumerate(content[split][:limit] if limit else content[split]):
        item = dict(item)
        item.setdefault("id", f"{split}_{k:04d}")
        for key in ("image", *MASK_KEYS):
            if key in item and isinstance(item[key], str):
                item[key] = str(datalist.parent / item[key])
        items.append(item)
    if not items:
        raise ValueError(f"{datalist}: split {split!r} is empty")
    return items


def iter_real(datalist: str | Path, split: str, limit: int | None = None) -> Iterator[Item]:
    for item in datalist_items(datalist, split, limit):
        yield (str(item["id"]), *read_ct(item["image"]))


def report_text(item: dict, datalist: str | Path) -> str | None:
    """The report of a datalist item: inline ``report`` text or the ``report_file`` beside the datalist."""
    if item.get("report"):
        return str(item["report"])
    if item.get("report_file"):
        return read_text_file(Path(datalist).parent / item["report_file"])  # UTF-8, or one line naming the file
    return None
