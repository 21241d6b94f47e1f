"""Datalists: ``{"training": [...], "validation": [...]}`` JSON files naming each case's volumes and report.

Each item holds ``image`` (the CT in HU), optional ``lobe``, ``airway``, ``vessel`` label maps (paths relative to
the dataset root, absolute paths kept) and the report as ``report`` (text) or ``report_file`` (a path). Optional
keys: ``id`` (a name for messages; defaults to the image file name), and for CT-RATE ``rescale_slope``,
``rescale_intercept``, ``spacing`` and ``patient`` (see :mod:`scripts.data.ctrate`).

MONAI's ``load_decathlon_datalist`` is not used: it resolves only ``image``/``label`` and resolves other keys only
when the file exists, so a missing mask would stay relative and could not be reported with its full path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.conventions import MASK_KEYS
from scripts.data.dicom import is_dicom_series
from scripts.data.io import write_json

IMAGE_KEY = "image"
REPORT_KEY = "report"
REPORT_FILE_KEY = "report_file"
PATH_KEYS = (IMAGE_KEY, *MASK_KEYS, REPORT_FILE_KEY)
SECTIONS = ("training", "validation")


class DataError(ValueError):
    """A bad case or datalist; the message names the case, the file and what to fix."""


@dataclass(frozen=True)
class Problem:
    """One problem found in one case.

    Args:
        case: the case's name, e.g. ``training[3] train_1_a_1``.
        file: the file concerned, or ``""`` when the problem is in the datalist item itself.
        problem: what is wrong and how to fix it.
    """

    case: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"case {self.case}: {self.file}: {self.problem}" if self.file else f"case {self.case}: {self.problem}"


def case_id(item: dict[str, Any], default: str = "?") -> str:
    """A short name for a datalist item: its ``id``, else its image file name without ``.nii(.gz)``."""
    if item.get("id"):
        return str(item["id"])
    image = item.get(IMAGE_KEY)
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name
    return default


def item_name(section: str, index: int, item: Any) -> str:
    """The name of an item in messages: ``training[3] train_1_a_1`` (section, index and :func:`case_id`)."""
    cid = case_id(item, default="") if isinstance(item, dict) else ""
    return f"{section}[{index}] {cid}" if cid else f"{section}[{index}]"


def resolve_item(item: dict[str, Any], dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Copy of ``item`` with path keys joined to ``dataset_dir`` (absolute paths kept) and an ``id`` added.

    Mask keys holding ``None`` or ``""`` are dropped, so "no mask" has one spelling: the key is absent.
    """
    out = dict(item)
    for key in PATH_KEYS:
        value = out.get(key)
        if value is None or value == "":
            out.pop(key, None)
        elif isinstance(value, (str, os.PathLike)):
            out[key] = str(Path(dataset_dir, value)) if not Path(value).is_absolute() else str(value)
    out.setdefault("id", case_id(out, default=""))
    if not out["id"]:
        del out["id"]
    return out


def check_item(
    item: Any,
    name: str,
    allow_missing_masks: bool = False,
    check_files: bool = True,
    check_report: bool = True,
    require_image: bool = True,
) -> list[Problem]:
    """Problems of one resolved datalist item: missing keys, missing files, no report.

    Args:
        item: a datalist item after :func:`resolve_item`.
        name: the case's name used in messages.
        allow_missing_masks: masks may be absent (text-only training); otherwise each of ``lobe``, ``airway``,
            ``vessel`` is required.
        check_files: also check that every named file exists.
        check_report: require report text or a report file.
        require_image: require the CT (False for anatomy-controlled inference from masks alone).
    """
    if not isinstance(item, dict):
        return [Problem(name, "", f"item must be a JSON object, got {type(item).__name__}")]
    problems = []
    if require_image and IMAGE_KEY not in item:
        problems.append(Problem(name, "", f"missing key '{IMAGE_KEY}' (path of the CT volume)"))
    if not allow_missing_masks:
        for key in MASK_KEYS:
            if key not in item:
                problems.append(
                    Problem(name, "", f"missing key '{key}'; add the mask path or allow missing masks (text-only)")
                )
    if check_report and REPORT_FILE_KEY not in item:
        if not isinstance(item.get(REPORT_KEY), str):
            problems.append(Problem(name, "", f"missing key '{REPORT_KEY}' (text) or '{REPORT_FILE_KEY}' (path)"))
        elif not item[REPORT_KEY].strip():
            problems.append(Problem(name, "", "report is empty; give the report text"))
    if check_files:
        for key in PATH_KEYS:
            path = Path(item[key]) if key in item else None
            if path is None or path.is_file() or (key != REPORT_FILE_KEY and is_dicom_series(path)):
                continue
            if path.is_dir():
                problem = f"'{key}' is a folder without DICOM files; give a NIfTI file or a DICOM series folder"
            else:
                problem = f"'{key}' file not found; check the path and the dataset root"
            problems.append(Problem(name, str(item[key]), problem))
    return problems


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file; a one-line error names an unreadable or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: datalist not found")
    try:
        datalist = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(datalist, dict):
        raise DataError(f"{path}: a datalist is a JSON object with sections {SECTIONS}, got {type(datalist).__name__}")
    return datalist


def section_items(datalist: dict[str, Any], section: str, source: str = "datalist") -> list[Any]:
    """The list of items of one section; an error lists the sections that exist."""
    if section not in datalist:
        raise DataError(f"{source}: no section '{section}'; sections present: {sorted(datalist)}")
    items = datalist[section]
    if not isinstance(items, list):
        raise DataError(f"{source}: section '{section}' must be a list of items, got {type(items).__name__}")
    return items


def load_datalist(
    path: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "training",
    allow_missing_masks: bool = False,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Load one section of a datalist with resolved paths, checking every item first.

    Args:
        path: the datalist JSON file.
        dataset_dir: root that relative paths are joined to; defaults to the datalist's folder.
        section: ``training`` or ``validation`` (any key of the JSON object).
        allow_missing_masks: masks may be absent (text-only training).
        check_files: check that every named file exists.

    Returns:
        the section's items as dicts with absolute paths and an ``id``.

    Raises:
        DataError: listing every problem of every item (one line each), not only the first.
    """
    root = Path(dataset_dir) if dataset_dir is not None else Path(path).parent
    items = section_items(read_datalist(path), section, source=str(path))
    resolved, problems = [], []
    for index, item in enumerate(items):
        item = resolve_item(item, root) if isinstance(item, dict) else item
        name = item_name(section, index, item)
        problems += check_item(item, name, allow_missing_masks, check_files)
        resolved.append(item)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise DataError(f"{path}: {len(problems)} problem(s) in section '{section}' (dataset_dir {root}):\n{lines}")
    return resolved


def merge_datalists(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    training_per_source: int | None = None,
    validation_limit: int | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write one datalist from several (e.g. phantom sets generated in parallel, one per seed).

    Relative paths (``PATH_KEYS`` and the phantom's ``truth``) are rewritten relative to ``out``'s folder, and each
    ``id`` is prefixed by its source's folder name, so ids stay unique and the merged file works from where it lies.

    Args:
        sources: datalist files; their sections are concatenated in this order.
        out: the merged datalist (written atomically).
        training_per_source: keep only the first N training items of each source (a smaller subset, e.g. for SR).
        validation_limit: keep only the first N validation items of the merged list.
        overwrite: replace an existing ``out``.

    Returns:
        the number of items per section.
    """
    if not sources:
        raise DataError("merge_datalists: no source datalists given")
    out = Path(out)
    merged: dict[str, list[dict[str, Any]]] = {section: [] for section in SECTIONS}
    for source in map(Path, sources):
        datalist, prefix = read_datalist(source), source.parent.name
        for section in SECTIONS:
            items = section_items(datalist, section, source=str(source)) if section in datalist else []
            if section == "training" and training_per_source is not None:
                items = items[:training_per_source]
            for item in items:
                item = dict(item)
                for key in (*PATH_KEYS, "truth"):
                    value = item.get(key)
                    if isinstance(value, str) and value and not Path(value).is_absolute():
                        item[key] = os.path.relpath(source.parent / value, out.parent)
                item["id"] = f"{prefix}_{case_id(item)}"
                merged[section].append(item)
    if validation_limit is not None:
        merged["validation"] = merged["validation"][:validation_limit]
    write_json(out, merged, overwrite=overwrite)
    return {section: len(items) for section, items in merged.items()}
