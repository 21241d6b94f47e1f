"""CT-RATE → datalist: one item per reconstruction, split by patient, with what is needed to reach HU.

CT-RATE (docs/README.md, data conventions) stores volumes as ``train_<patient>_<scan>_<recon>.nii.gz`` (and ``valid_...``), possibly
nested (``train/train_1/train_1_a/train_1_a_1.nii.gz``); a reports CSV (``VolumeName``, ``Findings_EN``,
``Impressions_EN``) and a metadata CSV (``VolumeName``, ``RescaleSlope``, ``RescaleIntercept``, ``XYSpacing`` such
as "[0.7, 0.7]", ``ZSpacing``). Stored values are not HU and some headers carry a wrong spacing, so each item
carries ``rescale_slope``, ``rescale_intercept`` and ``spacing`` [x, y, z] for
:class:`scripts.data.transforms.ApplyRescaled` (which assumes the NIfTI header itself applies no scaling).

Item: ``{"id", "patient", "image", "report": "Findings: ... Impression: ...", "rescale_slope",
"rescale_intercept", "spacing"}`` plus ``lobe``/``airway``/``vessel`` found as ``<masks_dir>/<key>/<VolumeName>``.
Paths are relative to the CT-RATE folder (absolute for masks outside it): pass that folder as ``dataset_dir``.

CLI::

    python -m scripts.data.ctrate --ctrate_dir D --reports R.csv --metadata M.csv --out datalist.json \\
        [--masks_dir M] [--val_fraction 0.1] [--seed 0] [--official_split] [--overwrite]
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.cli import ArgumentParser, run_main
from scripts.conventions import MASK_KEYS
from scripts.data.datalist import DataError, Problem
from scripts.data.io import OutputExistsError, read_utf8_text, write_json

NAME_PATTERN = re.compile(r"^(?P<split>train|valid)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)\.nii(?:\.gz)?$")
REPORT_COLUMNS = ("VolumeName", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
_MISSING_TEXT = {"", "nan", "none", "null"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class VolumeName:
    """A parsed CT-RATE file name ``<split>_<patient>_<scan>_<recon>.nii.gz``."""

    name: str  # without .nii/.nii.gz
    split: str  # train or valid
    patient: str  # e.g. train_12: the unit of the train/validation split
    scan: str
    recon: int

    @classmethod
    def parse(cls, file_name: str) -> VolumeName | None:
        match = NAME_PATTERN.match(Path(file_name).name)
        if match is None:
            return None
        split, patient = match["split"], f"{match['split']}_{int(match['patient'])}"
        name = re.sub(r"\.nii(?:\.gz)?$", "", Path(file_name).name)
        return cls(name, split, patient, match["scan"], int(match["recon"]))

    @property
    def sort_key(self) -> tuple:
        return self.split, int(self.patient.split("_")[1]), self.scan, self.recon


def find_volumes(
    ctrate_dir: Path, skip: Sequence[Path] = ()
) -> tuple[dict[str, tuple[VolumeName, Path]], list[Problem]]:
    """All CT-RATE volumes under ``ctrate_dir`` (any depth) by name; duplicates are reported, the first kept.

    Args:
        ctrate_dir: the CT-RATE folder.
        skip: folders not to search (a masks folder inside the CT-RATE folder).
    """
    found: dict[str, tuple[VolumeName, Path]] = {}
    problems = []
    skip = [s.resolve() for s in skip]
    for path in sorted(ctrate_dir.rglob("*.nii*")):
        if any(path.resolve().is_relative_to(s) for s in skip):
            continue
        volume = VolumeName.parse(path.name)
        if volume is None:
            continue
        if volume.name in found:
            problems.append(Problem(volume.name, str(path), f"duplicate of {found[volume.name][1]}; the first is kept"))
            continue
        found[volume.name] = (volume, path)
    return found, problems


def read_csv_rows(path: str | os.PathLike, columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """Rows of a CT-RATE CSV keyed by volume name (``VolumeName`` without ``.nii.gz``).

    Raises:
        DataError: naming the file when it is missing, not UTF-8 or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV not found")
    reader = csv.DictReader(io.StringIO(read_utf8_text(path, DataError), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    rows = {}
    for row in reader:
        name = re.sub(r"\.nii(?:\.gz)?$", "", (row["VolumeName"] or "").strip())
        if name:
            rows[name] = row
    return rows


def _text(value: str | None) -> str:
    value = " ".join((value or "").split())
    return "" if value.lower() in _MISSING_TEXT else value


def join_report(findings: str | None, impression: str | None) -> str:
    """``"Findings: ... Impression: ..."``; a missing section is left out, both missing gives ""."""
    parts = [(label, _text(value)) for label, value in (("Findings", findings), ("Impression", impression))]
    return " ".join(f"{label}: {value}" for label, value in parts if value)


def parse_metadata(row: dict[str, str]) -> tuple[float, float, list[float]]:
    """(slope, intercept, spacing [x, y, z] in mm) from a metadata row.

    Raises:
        ValueError: when a value is missing, not finite, a zero slope or a non-positive spacing.
    """
    slope = _number(row["RescaleSlope"], "RescaleSlope")
    intercept = _number(row["RescaleIntercept"], "RescaleIntercept")
    xy = [float(v) for v in _NUMBER.findall(row["XYSpacing"] or "")]
    if len(xy) == 1:
        xy = xy * 2
    spacing = [*xy, _number(row["ZSpacing"], "ZSpacing")]
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing XYSpacing={row['XYSpacing']!r} ZSpacing={row['ZSpacing']!r} is not 3 positive mm")
    if slope == 0:
        raise ValueError("RescaleSlope is 0")
    return slope, intercept, spacing


def _number(text: str | None, column: str) -> float:
    numbers = _NUMBER.findall(text or "")
    if len(numbers) != 1 or not math.isfinite(float(numbers[0])):
        raise ValueError(f"{column}={text!r} is not one number")
    return float(numbers[0])


def split_patients(patients: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The validation patients: a seeded random ``val_fraction`` of them (at least one when the fraction is > 0
    and there are two or more patients, never all)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    patients = sorted(set(patients))
    count = round(val_fraction * len(patients))
    if val_fraction > 0 and len(patients) > 1:
        count = min(max(count, 1), len(patients) - 1)
    return set(random.Random(seed).sample(patients, count))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def build_ctrate_datalist(
    ctrate_dir: str | os.PathLike,
    reports_csv: str | os.PathLike,
    metadata_csv: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    official_split: bool = False,
) -> tuple[dict[str, list[dict[str, Any]]], list[Problem]]:
    """A datalist of the CT-RATE volumes found on disk, and the problems met on the way.

    Volumes on disk without a report or metadata row, with bad metadata or an empty report are left out; volumes
    in the reports CSV but not on disk are reported; masks missing for a volume are reported (the volume is kept).

    Args:
        ctrate_dir: the CT-RATE folder (searched at any depth).
        reports_csv, metadata_csv: the CT-RATE CSV files.
        masks_dir: optional folder holding ``<key>/<VolumeName>`` for ``lobe``, ``airway``, ``vessel``.
        val_fraction: share of patients put in ``validation`` (ignored with ``official_split``).
        seed: seed of the patient split.
        official_split: ``valid_*`` patients form ``validation``, ``train_*`` ones ``training``.

    Returns:
        ``{"training": [...], "validation": [...]}`` and the problems.
    """
    root = Path(ctrate_dir)
    if not root.is_dir():
        raise DataError(f"{root}: CT-RATE folder not found")
    masks = Path(masks_dir) if masks_dir is not None else None
    if masks is not None and not masks.is_dir():
        raise DataError(f"{masks}: masks folder not found")
    reports = read_csv_rows(reports_csv, REPORT_COLUMNS)
    metadata = read_csv_rows(metadata_csv, METADATA_COLUMNS)
    volumes, problems = find_volumes(root, skip=[masks] if masks is not None else [])
    for name in sorted(set(reports) - set(volumes)):
        problems.append(Problem(name, str(reports_csv), f"listed in the reports CSV but not found under {root}"))
    items: list[tuple[VolumeName, dict[str, Any]]] = []
    for name, (volume, path) in sorted(volumes.items(), key=lambda kv: kv[1][0].sort_key):
        if name not in reports:
            problems.append(Problem(name, str(path), f"on disk but not in {reports_csv}; left out"))
            continue
        if name not in metadata:
            problems.append(Problem(name, str(path), f"on disk but not in {metadata_csv} (no HU rescale); left out"))
            continue
        report = join_report(reports[name]["Findings_EN"], reports[name]["Impressions_EN"])
        if not report:
            problems.append(Problem(name, str(reports_csv), "Findings_EN and Impressions_EN are empty; left out"))
            continue
        try:
            slope, intercept, spacing = parse_metadata(metadata[name])
        except ValueError as err:
            problems.append(Problem(name, str(metadata_csv), f"bad metadata: {err}; left out"))
            continue
        item = {
            "id": name,
            "patient": volume.patient,
            "image": _relative(path, root),
            "report": report,
            "rescale_slope": slope,
            "rescale_intercept": intercept,
            "spacing": spacing,
        }
        if masks is not None:
            for key in MASK_KEYS:
                mask = masks / key / path.name
                if mask.is_file():
                    item[key] = _relative(mask, root)
                else:
                    problems.append(Problem(name, str(mask), f"no '{key}' mask; the volume is kept without it"))
        items.append((volume, item))
    if official_split:
        validation = {v.patient for v, _ in items if v.split == "valid"}
    else:
        validation = split_patients((v.patient for v, _ in items), val_fraction, seed)
    datalist = {
        "training": [item for v, item in items if v.patient not in validation],
        "validation": [item for v, item in items if v.patient in validation],
    }
    return datalist, problems


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a CT-RATE datalist; print the problems met; exit 1 when no volume could be used."""
    parser = ArgumentParser(prog="python -m scripts.data.ctrate", description=main.__doc__)
    parser.add_argument("--ctrate_dir", required=True, help="CT-RATE folder holding the .nii.gz volumes")
    parser.add_argument("--reports", required=True, help="reports CSV (VolumeName, Findings_EN, Impressions_EN)")
    parser.add_argument("--metadata", required=True, help="metadata CSV (RescaleSlope, RescaleIntercept, ...)")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--masks_dir", default=None, help="folder with <lobe|airway|vessel>/<VolumeName> masks")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of patients for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    parser.add_argument("--official_split", action="store_true", help="valid_* → validation, train_* → training")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    try:
        datalist, problems = build_ctrate_datalist(
            args.ctrate_dir, args.reports, args.metadata, args.masks_dir, args.val_fraction, args.seed,
            args.official_split,
        )  # fmt: skip
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        used = sum(len(items) for items in datalist.values())
        if not used:
            print(f"error: no usable CT-RATE volume under {args.ctrate_dir}; see the warnings above", file=sys.stderr)
            return 1
        write_json(args.out, datalist, overwrite=args.overwrite)
    except (DataError, OutputExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = {s: (len(items), len({i["patient"] for i in items})) for s, items in datalist.items()}
    summary = ", ".join(f"{s} {n} volume(s) of {p} patient(s)" for s, (n, p) in counts.items())
    print(f"wrote {args.out}: {summary}; {len(problems)} problem(s); use --dataset_dir {args.ctrate_dir}")
    return 0


if __name__ == "__main__":
    run_main("ctrate", main)
