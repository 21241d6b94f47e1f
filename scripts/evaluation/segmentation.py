"""Segmentation by the joint model (paper Table 5): Dice of generated lobe/airway/vessel maps against references.

The model holds the CT fixed and generates the three mask channels, once with the case's report as the text
condition and once without (the null embedding). It enters as a callable
``segment(ct_hu, spacing, report_or_None) -> {"lobe": labels 0..5, "airway": {0,1}, "vessel": {0,1}}``, or as
predictions written earlier to ``<folder>/<condition>/<case id>/{lobe,airway,vessel}.nii.gz``
(:func:`folder_predictor`). Lobe Dice is the mean over the five lobes, as the paper's single "Lobe" column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scripts.conventions import LOBE_LABELS, MASK_KEYS
from scripts.data.io import read_nifti

Segmenter = Callable[[np.ndarray, Sequence[float], "str | None"], dict[str, np.ndarray]]
Predictor = Callable[[dict, str], dict[str, np.ndarray]]
CONDITIONS = ("without_report", "with_report")
COLUMNS = ("airway", "lobe", "vessel")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (nothing to find, nothing found)."""
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise ValueError(f"Dice of masks with different shapes {pred.shape} and {ref.shape}")
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def mask_dice(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice per lobe (``lobe_1``..``lobe_5``), their mean (``lobe``), ``airway`` and ``vessel``, for the keys both
    dicts hold."""
    out: dict[str, float] = {}
    if "lobe" in pred and "lobe" in ref:
        for label in LOBE_LABELS:
            out[f"lobe_{label}"] = dice(np.asarray(pred["lobe"]) == label, np.asarray(ref["lobe"]) == label)
        out["lobe"] = float(np.mean([out[f"lobe_{label}"] for label in LOBE_LABELS]))
    for key in ("airway", "vessel"):
        if key in pred and key in ref:
            out[key] = dice(pred[key], ref[key])
    return out


def model_predictor(segment: Segmenter) -> Predictor:
    """Wrap the joint model's ``segment(ct_hu, spacing, report_or_None)`` as a ``predict(case, condition)``."""

    def predict(case: dict, condition: str) -> dict[str, np.ndarray]:
        report = case.get("report") if condition == "with_report" else None
        return segment(case["ct_hu"], case["spacing"], report)

    return predict


def run_segmentation_study(
    cases: Sequence[dict], predict: Predictor, conditions: Sequence[str] = CONDITIONS, progress: bool = True
) -> dict:
    """Dice per case and condition, and the mean ± sd table.

    Args:
        cases: dicts with ``id`` and the reference masks ``lobe``, ``airway``, ``vessel`` (arrays), plus what
            ``predict`` needs (``ct_hu``, ``spacing``, ``report`` for :func:`model_predictor`).
        predict: ``predict(case, condition) -> masks`` (:func:`model_predictor` or :func:`folder_predictor`).
        conditions: ``without_report`` and/or ``with_report``.
        progress: show a progress bar.
    Returns:
        ``{"cases": {id: {condition: dice dict}}, "summary": {condition: {column: {"mean", "std", "n"}}}}``.
    """
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; expected some of {CONDITIONS}")
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    for case in tqdm(cases, desc="segmentation", disable=not progress):
        ref = {k: case[k] for k in MASK_KEYS if k in case}
        per_case[str(case["id"])] = {c: mask_dice(predict(case, c), ref) for c in conditions}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for condition in conditions:
        summary[condition] = {}
        for column in COLUMNS:
            values = [d[condition][column] for d in per_case.values() if column in d[condition]]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                summary[condition][column] = {"mean": float(np.mean(values)), "std": std, "n": len(values)}
    return {"cases": per_case, "summary": summary}


def segmentation_markdown(result: dict) -> str:
    """Table 5 layout: one row per condition, Dice mean ± sd per column."""
    lines = ["| condition | " + " | ".join(f"Dice {c}" for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for condition, columns in result["summary"].items():
        cells = [f"{columns[c]['mean']:.3f} ± {columns[c]['std']:.3f}" if c in columns else "—" for c in COLUMNS]
        lines.append(f"| {condition.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def folder_predictor(folder: str | Path) -> Predictor:
    """Predictions written earlier: ``<folder>/<condition>/<case id>/<mask>.nii.gz`` for the masks present."""
    folder = Path(folder)

    def predict(case: dict, condition: str) -> dict[str, np.ndarray]:
        case_dir = folder / condition / str(case["id"])
        masks = {k: read_nifti(case_dir / f"{k}.nii.gz")[0] for k in MASK_KEYS if (case_dir / f"{k}.nii.gz").is_file()}
        if not masks:
            raise FileNotFoundError(f"{case_dir}: no lobe/airway/vessel .nii.gz predictions")
        return masks

    return predict


def folder_conditions(folder: str | Path) -> list[str]:
    """The conditions whose sub-folder exists under ``folder``."""
    conditions = [c for c in CONDITIONS if (Path(folder) / c).is_dir()]
    if not conditions:
        raise FileNotFoundError(f"{folder}: neither of the sub-folders {CONDITIONS}")
    return conditions
