"""The anatomy maps of generated samples: how much of each structure, whether the maps agree with the generated CT,
and whether the lobes are where lobes are.

For each sample the inference writer made (a ``<id>.json`` sidecar whose ``"files"`` name the ``ct``, ``lobe``,
``airway`` and ``vessel`` NIfTI files beside it):

- **fractions**: the share of the volume's voxels that are lung (lobe label > 0), airway and vessel. Beside them, the
  same fractions of the training data (a datalist split with ``lobe`` / ``airway`` / ``vessel`` files) resampled by
  nearest neighbour to the sample's grid (the same field of view is assumed, as the training preprocessing makes
  it), and their ratio: a model that never draws airways has an airway ratio of 0.
- **self-consistency**: Dice between each generated map and the segmentation of the generated CT by an anatomy
  backend (classical by default, no weights): lungs (any lobe), airway and vessels. A map the CT does not show
  (vessels drawn where the CT has none, or the reverse) scores low.
- **lobe order**: the lobes' centroids in patient space (RAS, from the affine) against the rules of
  :data:`LOBE_ORDER_RULES`: right lobes to the right of the left ones, upper lobes above the lower ones, the right
  middle lobe below the right upper and in front of the right lower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scripts.anatomy.backends import Backend, backend_factory
from scripts.data.io import read_nifti
from scripts.evaluation.anatomy_measures import measures_summary, spacing_of
from scripts.evaluation.data import check_ct
from scripts.evaluation.segmentation import dice
from scripts.text.reports import read_json_file

STRUCTURES = ("lung", "airway", "vessel")
MAP_FILES = ("ct", "lobe", "airway", "vessel")
# (name, lobe a, lobe b, RAS axis, sign): the rule holds when sign * (centroid_a - centroid_b)[axis] > 0.
# Lobe labels as scripts.conventions.LOBE_LABELS: 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL. RAS: +x the patient's right,
# +y anterior, +z superior.
LOBE_ORDER_RULES = (
    ("left upper lobe above left lower", 1, 2, 2, 1),
    ("right upper lobe above right middle", 3, 4, 2, 1),
    ("right upper lobe above right lower", 3, 5, 2, 1),
    ("right middle lobe in front of right lower", 4, 5, 1, 1),
)
RIGHT_LOBES, LEFT_LOBES = (3, 4, 5), (1, 2)


def map_fractions(lobe: np.ndarray, airway: np.ndarray, vessel: np.ndarray) -> dict[str, float]:
    """Share of all voxels that are lung (lobe > 0), airway and vessel, for maps of one grid."""
    size = float(np.asarray(lobe).size)
    return {
        "lung": float((np.asarray(lobe) > 0).sum() / size),
        "airway": float((np.asarray(airway) > 0).sum() / size),
        "vessel": float((np.asarray(vessel) > 0).sum() / size),
    }


def resample_nearest(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``volume`` on a grid of ``shape`` over the same field of view, by nearest neighbour: output voxel ``i`` of an
    axis takes input voxel ``floor(i · m / n)``. For an integer factor this keeps voxels 0, f, 2f, … (downsampling,
    as :func:`scripts.diffusion.downsample_nearest` makes the low-resolution training data) or repeats each voxel f
    times (upsampling, as :func:`scripts.diffusion.upsample_nearest`)."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(shape) != 3:
        raise ValueError(f"resample_nearest takes a 3D volume and a 3D shape, got {volume.shape} and {tuple(shape)}")
    index = [(np.arange(n) * m) // n for n, m in zip(shape, volume.shape)]
    return volume[np.ix_(*index)]


def mask_backend(backend: str | Backend) -> Backend:
    """An anatomy mask backend (:mod:`scripts.anatomy`) by name, or the instance itself."""
    return backend if isinstance(backend, Backend) else backend_factory(backend)()


def self_consistency(
    ct_hu: np.ndarray, spacing: Sequence[float], maps: Mapping[str, np.ndarray], backend: str | Backend = "classical"
) -> dict[str, float]:
    """Dice of the generated lung (any lobe), airway and vessel maps against the backend's segmentation of the CT."""
    found = mask_backend(backend).segment(ct_hu, spacing, ["lobe", "airway", "vessel"])
    return {
        "dice_lung": dice(found["lobe"] > 0, np.asarray(maps["lobe"]) > 0),
        "dice_airway": dice(found["airway"], maps["airway"]),
        "dice_vessel": dice(found["vessel"], maps["vessel"]),
    }


def lobe_centroids(lobe: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
    """Centroid (RAS mm) of every lobe label present in ``lobe``."""
    lobe = np.asarray(lobe)
    out = {}
    for label in (*LEFT_LOBES, *RIGHT_LOBES):
        voxels = np.argwhere(lobe == label)
        if len(voxels):
            out[label] = (np.asarray(affine)[:3, :3] @ voxels.mean(axis=0)) + np.asarray(affine)[:3, 3]
    return out


def lobe_order(lobe: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Whether the lobes are in anatomical order: ``{"in_order": bool, "failed": [rule, ...]}`` (a missing lobe
    fails as ``"<label> missing"``)."""
    centroids = lobe_centroids(lobe, affine)
    failed = [f"lobe {label} missing" for label in (*LEFT_LOBES, *RIGHT_LOBES) if label not in centroids]
    right = [centroids[k][0] for k in RIGHT_LOBES if k in centroids]
    left = [centroids[k][0] for k in LEFT_LOBES if k in centroids]
    if right and left and min(right) <= max(left):
        failed.append("right lobes right of the left lobes")
    for name, a, b, axis, sign in LOBE_ORDER_RULES:
        if a in centroids and b in centroids and sign * (centroids[a][axis] - centroids[b][axis]) <= 0:
            failed.append(name)
    return {"in_order": not failed, "failed": failed}


def sample_files(folder: str | Path) -> list[tuple[str, dict[str, Path]]]:
    """``(id, {"ct", "lobe", "airway", "vessel": path})`` of every sample the inference writer left in ``folder``
    (its ``*.json`` sidecars with ``"files"``), sorted by sidecar path. One-line errors: no such sidecar, or a named
    file missing."""
    folder = Path(folder)
    samples = []
    for sidecar in sorted(folder.rglob("*.json")):
        meta = read_json_file(sidecar, "sidecar")
        files = meta.get("files") if isinstance(meta, dict) else None
        if not isinstance(files, dict) or not all(name in files for name in MAP_FILES):
            continue
        paths = {name: sidecar.parent / files[name] for name in MAP_FILES}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{sidecar}: names files that are not there: {', '.join(missing)}")
        samples.append((str(sidecar.relative_to(folder)).removesuffix(".json"), paths))
    if not samples:
        raise FileNotFoundError(
            f"{folder}: no sample sidecars naming ct, lobe, airway and vessel files (the inference writer's "
            "<id>.json); set synthetic_dir to a folder of generated samples"
        )
    return samples


def training_fractions(items: Sequence[Mapping[str, Any]], shape: Sequence[int]) -> dict[str, float]:
    """Mean :func:`map_fractions` of datalist items (``lobe``, ``airway``, ``vessel`` paths) on a grid of ``shape``."""
    rows = []
    for item in items:
        missing = [key for key in ("lobe", "airway", "vessel") if not item.get(key)]
        if missing:
            raise ValueError(f"training item {item.get('id', '?')}: no {missing} map; the maps part needs all three")
        rows.append(
            map_fractions(*(resample_nearest(read_nifti(item[k])[0], shape) for k in ("lobe", "airway", "vessel")))
        )
    return {key: float(np.mean([r[key] for r in rows])) for key in STRUCTURES}


def evaluate_maps(
    folder: str | Path,
    training_items: Sequence[Mapping[str, Any]] | None = None,
    backend: str | Backend = "classical",
    limit: int | None = None,
    check: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fractions, self-consistency and lobe order of every sample in ``folder`` (see the module docstring).

    Args:
        folder: generated samples with the inference writer's sidecars.
        training_items: datalist items of the training data (with map paths) for the reference fractions; None
            leaves the reference out.
        backend: anatomy backend segmenting the generated CTs.
        limit: read at most this many samples.
        check: refuse a CT that is not in HU (:func:`scripts.evaluation.data.check_ct`); off for toy volumes.
        progress: progress bar.

    Returns:
        ``{"backend", "samples": {id: row}, "summary": {key: mean/std/n}, "in_order": share}`` and, with training
        items, ``"grids": {"XxYxZ": {"n", "generated", "training", "ratio"}}``: mean fractions per structure of the
        samples on that grid, of the training data resampled to it, and generated / training.
    """
    backend = mask_backend(backend)
    samples = sample_files(folder)[:limit] if limit else sample_files(folder)
    rows: dict[str, dict[str, Any]] = {}
    by_grid: dict[str, list[str]] = {}
    for sample_id, paths in tqdm(samples, desc="anatomy maps", disable=not progress):
        ct, affine = read_nifti(paths["ct"])
        ct = np.asarray(ct, dtype=np.float32)
        if check:
            check_ct(ct, paths["ct"])
        maps = {name: np.asarray(read_nifti(paths[name])[0]) for name in ("lobe", "airway", "vessel")}
        for name, value in maps.items():
            if value.shape != ct.shape:
                raise ValueError(f"{paths[name]}: shape {value.shape}, its CT {ct.shape}; not one sample's maps")
        spacing = spacing_of(affine)
        order = lobe_order(maps["lobe"], affine)
        rows[sample_id] = {
            **{f"fraction_{k}": v for k, v in map_fractions(maps["lobe"], maps["airway"], maps["vessel"]).items()},
            **self_consistency(ct, spacing, maps, backend),
            "lobes_in_order": order["in_order"],
            "lobe_order_failed": order["failed"],
        }
        by_grid.setdefault("x".join(str(s) for s in ct.shape), []).append(sample_id)
    numeric = [k for k, v in next(iter(rows.values())).items() if isinstance(v, float)]
    result: dict[str, Any] = {
        "backend": backend.name,
        "samples": rows,
        "summary": measures_summary([{key: row[key] for key in numeric} for row in rows.values()]),
        "in_order": float(np.mean([row["lobes_in_order"] for row in rows.values()])),
    }
    if training_items:
        result["grids"] = {}
        for grid, ids in by_grid.items():
            generated = {key: float(np.mean([rows[i][f"fraction_{key}"] for i in ids])) for key in STRUCTURES}
            reference = training_fractions(training_items, [int(s) for s in grid.split("x")])
            result["grids"][grid] = {
                "n": len(ids),
                "generated": generated,
                "training": reference,
                "ratio": {k: generated[k] / reference[k] if reference[k] > 0 else float("nan") for k in STRUCTURES},
            }
    return result


def maps_markdown(result: Mapping[str, Any]) -> str:
    """The part's section of the evaluation report."""
    summary = result["summary"]
    lines = ["| measure | mean ± sd (n) |", "|---|---|"]
    for key, value in summary.items():
        lines.append(f"| {key} | {value['mean']:.4g} ± {value['std']:.3g} ({value['n']}) |")
    lines.append(f"| lobes in anatomical order | {result['in_order']:.0%} |")
    text = "\n".join(lines) + "\n"
    if "grids" in result:
        text += (
            "\n| grid (samples) | structure | generated fraction | training fraction | ratio |\n|---|---|---|---|---|\n"
        )
        for grid, value in result["grids"].items():
            for key in STRUCTURES:
                text += (
                    f"| {grid} ({value['n']}) | {key} | {value['generated'][key]:.4g} | {value['training'][key]:.4g} "
                    f"| {value['ratio'][key]:.3g} |\n"
                )
    return text + f"\nSelf-consistency: Dice of each map against the {result['backend']} segmentation of the CT.\n"
