"""Checks of one case (headers, voxels, labels) and a scan that reports every bad case of a dataset at once.

The same checks run inside the preprocessing pipeline (:class:`scripts.data.transforms.CheckFilesd` and
:class:`~scripts.data.transforms.ValidateCased`, which raise on the first bad case) and in :func:`scan_dataset`
(which collects them all). CLI::

    python -m scripts.data.validation --datalist datalist.json --dataset_dir /data/ct [--allow_missing_masks]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from scripts.cli import ArgumentParser, run_main
from scripts.conventions import MASK_KEYS, NUM_LOBES
from scripts.data.datalist import (
    IMAGE_KEY,
    REPORT_FILE_KEY,
    REPORT_KEY,
    SECTIONS,
    Problem,
    check_item,
    item_name,
    read_datalist,
    resolve_item,
    section_items,
)
from scripts.data.dicom import is_dicom_series, read_series
from scripts.data.io import read_nifti

# largest label of each mask (labels are the integers 0..max)
LABEL_MAX = {"lobe": NUM_LOBES, "airway": 1, "vessel": 1}
LABEL_MEANING = {"lobe": "lungmask LTRCLobes labels", "airway": "a binary mask", "vessel": "a binary mask"}
AFFINE_ATOL = 1e-3  # mm; mask and image affines may differ by rounding in the header
Header = tuple[str, tuple[int, ...], np.ndarray]  # (path, shape, affine)
MIN_VOLUME_AXIS = 4


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...] | None:
    """The 3D shape of a header shape, allowing trailing singleton axes; None when it is not one 3D volume."""
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 3 and all(s == 1 for s in shape[3:]):
        return shape[:3]
    return None


def read_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """(header shape, affine) of a NIfTI file, or of a DICOM series folder, without reading its voxels.

    Raises:
        ValueError: naming the file when it cannot be read as NIfTI (or the folder as one DICOM series).
    """
    if Path(path).is_dir():
        try:
            _, affine, shape = read_series(path, pixels=False)
        except Exception as err:  # pydicom raises many types for a damaged file
            raise ValueError(f"cannot read as a DICOM series ({type(err).__name__}: {err})") from None
        return shape, affine
    try:
        image = nib.load(str(path))
        return tuple(image.shape), np.asarray(image.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for a damaged file
        raise ValueError(f"cannot read as NIfTI ({type(err).__name__}: {err})") from None


def read_headers(name: str, item: dict[str, Any], keys: Sequence[str]) -> tuple[dict[str, Header], list[Problem]]:
    """Headers of the item's volumes that exist, and a problem for each that cannot be read.

    Args:
        name: the case's name for messages.
        item: a resolved datalist item.
        keys: volume keys to read (``image`` and mask keys); absent keys and missing files are skipped
            (:func:`scripts.data.datalist.check_item` reports those).

    Returns:
        per readable key ``(path, shape, affine)``, and the problems.
    """
    headers: dict[str, Header] = {}
    problems: list[Problem] = []
    for key in keys:
        path = item.get(key)
        if not isinstance(path, (str, os.PathLike)) or not (Path(path).is_file() or is_dicom_series(path)):
            continue
        try:
            headers[key] = (str(path), *read_header(path))
        except ValueError as err:
            problems.append(Problem(name, str(path), f"'{key}' {err}; replace the file"))
    return headers, problems


def header_problems(name: str, headers: dict[str, Header], affine_atol: float = AFFINE_ATOL) -> list[Problem]:
    """Geometry problems of one case from its headers: not 3D, bad affine, masks disagreeing with the image.

    Args:
        name: the case's name for messages.
        headers: per key (``image``, ``lobe``, ...) ``(path, shape, affine)``; masks are compared with ``image``
            when it is present.
        affine_atol: largest difference (mm) allowed between a mask's affine and the image's.
    """
    problems: list[Problem] = []
    geometry: dict[str, Header] = {}
    for key, (path, shape, affine) in headers.items():
        shape3 = spatial_shape(shape)
        if shape3 is None:
            problems.append(Problem(name, path, f"'{key}' has shape {tuple(shape)}; expected one 3D volume (X, Y, Z)"))
        elif min(shape3) < MIN_VOLUME_AXIS:  # a slice or a few, which the model grid would stretch into a volume
            problems.append(
                Problem(
                    name,
                    path,
                    f"'{key}' has shape {shape3}: fewer than {MIN_VOLUME_AXIS} voxels along an axis is not a 3D "
                    "volume; give the whole series",
                )
            )
        elif not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            problems.append(Problem(name, path, f"'{key}' has a non-finite or singular affine; fix the header"))
        else:
            geometry[key] = (path, shape3, affine)
    if IMAGE_KEY not in geometry:
        return problems
    _, image_shape, image_affine = geometry[IMAGE_KEY]
    for key, (path, shape, affine) in geometry.items():
        if key == IMAGE_KEY:
            continue
        if shape != image_shape:
            problem = f"'{key}' shape {shape} differs from the image's {image_shape}; resample it onto the image grid"
            problems.append(Problem(name, path, problem))
        elif not np.allclose(affine, image_affine, atol=affine_atol, rtol=0):
            diff = float(np.abs(affine - image_affine).max())
            problems.append(
                Problem(
                    name,
                    path,
                    f"'{key}' affine differs from the image's by up to {diff:.4g} mm (tolerance {affine_atol}); "
                    "resample the mask onto the image grid",
                )
            )
    return problems


def voxel_problems(name: str, key: str, path: str, array: np.ndarray) -> list[Problem]:
    """Voxel problems of one volume: NaN/inf anywhere, and for masks non-integer or out-of-range labels.

    Args:
        name: the case's name for messages.
        key: ``image`` or a mask key (``lobe``, ``airway``, ``vessel``).
        path: the file, for messages.
        array: the voxels, any shape.
    """
    array = np.asarray(array)
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            return [Problem(name, path, f"'{key}' holds {bad} NaN/inf voxel(s); repair or drop the volume")]
    if key not in LABEL_MAX or array.size == 0:
        return []
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        return [Problem(name, path, f"'{key}' holds non-integer values; expected {LABEL_MEANING[key]}")]
    low, high = array.min().item(), array.max().item()
    if low < 0 or high > LABEL_MAX[key]:
        return [
            Problem(
                name,
                path,
                f"'{key}' labels out of range: values {low:g}..{high:g}, expected 0..{LABEL_MAX[key]} "
                f"({LABEL_MEANING[key]})",
            )
        ]
    return []


def report_problems(name: str, item: dict[str, Any]) -> list[Problem]:
    """An unreadable or empty report (text or ``report_file``)."""
    text = item.get(REPORT_KEY)
    if isinstance(text, str) and text.strip():
        return []
    path = item.get(REPORT_FILE_KEY)
    if not path:
        return [Problem(name, "", "report is empty; give the report text")]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [Problem(name, str(path), f"cannot read report file ({type(err).__name__}: {err})")]
    return [] if text.strip() else [Problem(name, str(path), "report file is empty; write the report text into it")]


@dataclass
class ScanReport:
    """Result of :func:`scan_dataset`.

    Args:
        cases: number of cases scanned.
        problems: every problem found, in datalist order.
    """

    cases: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_cases(self) -> list[str]:
        """Names of the cases with at least one problem, each once, in order."""
        return list(dict.fromkeys(p.case for p in self.problems))

    def format(self) -> str:
        head = f"{self.cases} case(s) scanned, {len(self.bad_cases)} bad, {len(self.problems)} problem(s)"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def scan_case(
    name: str,
    item: dict[str, Any],
    allow_missing_masks: bool = False,
    voxels: bool = True,
    affine_atol: float = AFFINE_ATOL,
) -> list[Problem]:
    """Every problem of one resolved datalist item (keys, files, headers, report and, with ``voxels``, values)."""
    problems = check_item(item, name, allow_missing_masks, check_files=True)
    if not isinstance(item, dict):
        return problems
    headers, unreadable = read_headers(name, item, (IMAGE_KEY, *MASK_KEYS))
    problems += unreadable + header_problems(name, headers, affine_atol)
    if item.get(REPORT_FILE_KEY) and Path(item[REPORT_FILE_KEY]).is_file():
        problems += report_problems(name, item)
    if voxels:
        for key, (path, _, _) in headers.items():
            try:
                array, _ = read_nifti(path)
            except ValueError as err:
                problems.append(Problem(name, path, f"'{key}' voxels unreadable ({err}); replace the file"))
                continue
            problems += voxel_problems(name, key, path, array)
    return problems


def scan_dataset(
    datalist: dict[str, Any] | str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = SECTIONS,
    allow_missing_masks: bool = False,
    voxels: bool = True,
    affine_atol: float = AFFINE_ATOL,
) -> ScanReport:
    """Check every case of a datalist and report all problems instead of stopping at the first.

    Args:
        datalist: the datalist JSON file or its parsed content.
        dataset_dir: root for relative paths; defaults to the datalist file's folder (required for a dict).
        sections: sections to scan; a section absent from the datalist is skipped.
        allow_missing_masks: masks may be absent (text-only training).
        voxels: also read the voxels (NaN/inf, label ranges); False checks headers only.
        affine_atol: largest mask/image affine difference in mm.
    """
    if not isinstance(datalist, dict):
        dataset_dir = dataset_dir if dataset_dir is not None else Path(datalist).parent
        datalist = read_datalist(datalist)
    if dataset_dir is None:
        raise ValueError("scan_dataset: pass dataset_dir when the datalist is given as a dict")
    report = ScanReport()
    for section in sections:
        if section not in datalist:
            continue
        for index, item in enumerate(section_items(datalist, section)):
            report.cases += 1
            item = resolve_item(item, dataset_dir) if isinstance(item, dict) else item
            name = item_name(section, index, item)
            report.problems += scan_case(name, item, allow_missing_masks, voxels, affine_atol)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print every bad case of a datalist; exit status 1 when any is found."""
    parser = ArgumentParser(prog="python -m scripts.data.validation", description=main.__doc__)
    parser.add_argument("--datalist", required=True, help="datalist JSON file")
    parser.add_argument("--dataset_dir", default=None, help="root of relative paths (default: the datalist's folder)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help="sections to scan")
    parser.add_argument("--allow_missing_masks", action="store_true", help="masks may be absent (text-only data)")
    parser.add_argument("--header_only", action="store_true", help="skip reading voxels (faster, fewer checks)")
    args = parser.parse_args(argv)
    report = scan_dataset(
        args.datalist, args.dataset_dir, args.sections, args.allow_missing_masks, voxels=not args.header_only
    )
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    run_main("validation", main)
