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


def read_ct(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """CT (float32 HU) and spacing (mm) of one NIfTI file."""
    array, affine = read_nifti(path)
    return np.asarray(array, dtype=np.float32), spacing_of(affine)


def iter_synthetic(folder: str | Path, pattern: str = "**/*ct.nii.gz", limit: int | None = None) -> Iterator[Item]:
    root = Path(folder)
    for path in synthetic_paths(root, pattern, limit):
        yield (volume_id(path, root), *read_ct(path))


def datalist_items(datalist: str | Path, split: str, limit: int | None = None) -> list[dict]:
    """Items of one split of a datalist (``{"training": [...], "validation": [...]}``), paths made absolute."""
    datalist = Path(datalist)
    content = json.loads(datalist.read_text())
    if split not in content:
        raise KeyError(f"{datalist}: no split {split!r}; it has {sorted(content)}")
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
        return (Path(datalist).parent / item["report_file"]).read_text(encoding="utf-8")
    return None
