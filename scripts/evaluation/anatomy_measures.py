"""Anatomy measures of a chest CT: lung and airway volume, %LAA-950, pleural effusion per side, cardiothoracic ratio.

A *backend* turns a CT (HU, indexed (x, y, z) in RAS, +x = patient's right) into masks — lungs (0/1 left/2 right),
airway, heart, pleural effusion (0/1 left/2 right); the measures are then computed from the masks the same way
whatever the backend. Masks passed in (the generated ``lobe`` / ``airway`` channels) replace the backend's.

Backends (a registry: a new one is one decorated class):

- ``classical`` — works offline, no weights. Lungs and airway come from :mod:`scripts.anatomy.classical`.
  Effusion: fluid-density voxels (``FLUID_HU`` on a 3×3×3 median-filtered CT, which keeps edges where a
  Gaussian would smear them into the lung, and ``FLUID_RAW_HU`` on the raw CT) outside the lungs, in components
  that touch a lung and are at least ``MIN_EFFUSION_ML``, plus their one-voxel rim where the median is below
  ``FLUID_RIM_HU``; the side is that of the midline between the lungs. Heart: soft-tissue voxels (``HEART_HU``) outside
  the lungs and fluid, between the thorax's walls on their row and above the top of the right hemidiaphragm (:func:`dome_top`;
  below it the abdomen touches the heart), opened by ``HEART_OPENING_MM`` to cut thin bridges to the chest wall and
  great vessels, then the largest component whose centre lies between the lungs' centres, its rim given back.
- ``totalsegmentator`` — TotalSegmentator's ``total`` (lungs per side from the five lobe classes, heart),
  ``lung_vessels`` (airway = ``lung_trachea_bronchia``) and ``pleural_pericard_effusion`` (``pleural_effusion``,
  sided by the midline between the lungs) tasks, run through :mod:`scripts.anatomy.totalseg_backend` (the one
  TotalSegmentator integration: in-process, or in a separate environment with ``totalseg_python`` /
  ``MEDSYN_TOTALSEG_PYTHON``; weight folders checked first, with a one-line error naming the missing ones).

Measures (keys of :data:`MEASURES`):
``lung_volume_ml`` (+ ``_left``/``_right``), ``airway_volume_mm3``, ``laa950_percent`` (share of lung voxels
below -950 HU, raw HU), ``effusion_ml`` (+ ``_left``/``_right``), ``cardiothoracic_ratio`` = widest heart extent
along x on any axial slice / inner thoracic width (x extent of lungs ∪ effusion) on that same slice, with
``heart_width_mm`` and ``thorax_width_mm``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from scripts.anatomy import classical, totalseg_backend
from scripts.conventions import lung_sides

FLUID_HU = (0.0, 25.0)  # pleural fluid ~0-20 HU (median-filtered): below heart and muscle (~40 HU), above fat mixes
HEART_HU = (28.0, 110.0)  # blood and myocardium without contrast
FLUID_RAW_HU = (-10.0, 40.0)  # the voxel itself must be fluid-like too (15 ± 7 HU noise): keeps thin fat rims out
FLUID_RIM_HU = 35.0  # a median below this on the fluid's one-voxel rim: fluid next to muscle or heart
MIN_EFFUSION_ML = 10.0
HEART_OPENING_MM = 6.0
DOME_COLUMN_FRACTION = 0.25  # of the thorax's height: shorter columns say nothing about the diaphragm
LAA_HU = -950.0

# measure key -> (unit, mask group it needs)
MEASURES: dict[str, tuple[str, str]] = {
    "lung_volume_ml": ("mL", "lungs"),
    "lung_volume_ml_left": ("mL", "lungs"),
    "lung_volume_ml_right": ("mL", "lungs"),
    "airway_volume_mm3": ("mm³", "airway"),
    "laa950_percent": ("%", "laa"),
    "effusion_ml": ("mL", "effusion"),
    "effusion_ml_left": ("mL", "effusion"),
    "effusion_ml_right": ("mL", "effusion"),
    "cardiothoracic_ratio": ("", "heart"),
    "heart_width_mm": ("mm", "heart"),
    "thorax_width_mm": ("mm", "heart"),
}
# what each group needs computed first
_NEEDS = {
    "lungs": ("lungs",),
    "laa": ("lungs", "airway"),
    "airway": ("airway",),
    "effusion": ("lungs", "effusion"),
    "heart": ("lungs", "effusion", "heart"),
}


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) from a 4×4 affine (column norms)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def _check(ct_hu: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ct = np.asarray(ct_hu, dtype=np.float32)
    spacing = np.asarray(spacing, dtype=np.float64)
    if ct.ndim != 3 or spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"expected a 3D CT and three positive spacings, got shape {ct.shape} and spacing {spacing}")
    return ct, spacing


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    r = np.maximum(np.floor(radius_mm / spacing), 1).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * s / max(radius_mm, s)) ** 2 for g, s in zip(grid, spacing)) <= 1.0


def split_sides(mask: np.ndarray, body_centre_x: float) -> np.ndarray:
    """Label a mask 1 on the left (x below the midline) and 2 on the right (x above), as the lung labels."""
    x = np.arange(mask.shape[0])[:, None, None]
    return np.where(mask > 0, np.where(x > body_centre_x, 2, 1), 0).astype(np.uint8)


def _body_centre_x(ct: np.ndarray, lungs: np.ndarray) -> float:
    """The midline: between the two lungs when both are there, else the centre of the body's x extent."""
    xs = [np.flatnonzero((lungs == label).any(axis=(1, 2))) for label in (1, 2)]
    if all(len(x) for x in xs):
        return (xs[0][-1] + xs[1][0]) / 2.0
    body_x = np.flatnonzero((ct > classical.BODY_HU).any(axis=(1, 2)))
    return (body_x[0] + body_x[-1]) / 2.0 if len(body_x) else ct.shape[0] / 2.0


# --- backends --------------------------------------------------------------------------------------------------
GROUPS = ("lungs", "airway", "effusion", "heart")  # the masks a backend makes, in the order they are made


class Backend:
    """Mask provider. Subclasses implement the masks they can make; each takes (ct, spacing, masks so far).

    One instance may measure many CTs: a cache must be keyed by the CT array itself (``is``), not by ``id``.
    """

    name = ""

    def check(self, groups: Sequence[str]) -> None:
        """Raise a one-line error before any work when the masks ``groups`` cannot be made here (default: ready)."""

    def lungs(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        raise NotImplementedError

    def airway(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        raise NotImplementedError

    def effusion(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        raise NotImplementedError

    def heart(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        raise NotImplementedError


BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator adding a backend to :data:`BACKENDS` under ``name``."""

    def add(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return add


@register_backend("classical")
class ClassicalBackend(Backend):
    """Thresholds, connected components and morphology (see the module docstring); no weights."""

    def __init__(self) -> None:
        self._median: tuple[np.ndarray, np.ndarray] | None = None

    def _median_ct(self, ct: np.ndarray) -> np.ndarray:
        if self._median is None or self._median[0] is not ct:
            self._median = (ct, ndi.median_filter(ct, size=3, mode="nearest"))
        return self._median[1]

    def lungs(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        return classical.segment_lungs(ct, spacing)

    def airway(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        return classical.segment_airway(ct, spacing, lungs=masks.get("lungs"))

    def effusion(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        lungs = masks["lungs"] > 0
        med = self._median_ct(ct)
        fluid = (med > FLUID_HU[0]) & (med < FLUID_HU[1]) & (ct > FLUID_RAW_HU[0]) & (ct < FLUID_RAW_HU[1]) & ~lungs
        labels, count = ndi.label(fluid)
        if count == 0:
            return np.zeros(ct.shape, dtype=np.uint8)
        touching = np.unique(labels[ndi.binary_dilation(lungs) & fluid])
        sizes = np.bincount(labels.ravel(), minlength=count + 1) * float(np.prod(spacing)) / 1000.0
        keep = np.zeros(count + 1, dtype=bool)
        keep[touching] = True
        keep[sizes < MIN_EFFUSION_ML] = False
        keep[0] = False
        fluid = keep[labels]
        # the voxels on the fluid's edge, whose median a neighbouring muscle or heart pulls up, come back once
        rim = ndi.binary_dilation(fluid) & ~fluid & ~lungs & (med < FLUID_RIM_HU)
        rim &= (ct > FLUID_RAW_HU[0]) & (ct < FLUID_RAW_HU[1])
        return split_sides(fluid | rim, _body_centre_x(ct, masks["lungs"]))

    def heart(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        lungs = masks["lungs"]
        out = np.zeros(ct.shape, dtype=bool)
        if not (lungs == 1).any() or not (lungs == 2).any():
            return out
        thorax = (lungs > 0) | (masks["effusion"] > 0)
        med = self._median_ct(ct)
        soft = (med >= HEART_HU[0]) & (med <= HEART_HU[1]) & ~thorax & between_along_x(thorax)
        soft[:, :, : dome_top(thorax, lungs) + 1] = False  # below the right dome the abdomen touches the heart
        ball = _ball(HEART_OPENING_MM, spacing)
        labels, count = ndi.label(ndi.binary_opening(soft, structure=ball))
        if count == 0:
            return out
        lo, hi = (float(np.argwhere(lungs == label)[:, 0].mean()) for label in (1, 2))
        centres = ndi.center_of_mass(labels > 0, labels, range(1, count + 1))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        candidates = [i for i, c in enumerate(centres, start=1) if lo < c[0] < hi]
        if not candidates:
            return out
        best = max(candidates, key=lambda i: sizes[i])
        # give back the rim the opening took, without re-attaching what it cut off
        return ndi.binary_dilation(labels == best, structure=ball) & soft


def between_along_x(mask: np.ndarray) -> np.ndarray:
    """Voxels lying between the first and the last voxel of ``mask`` along x on their (y, z) row."""
    return np.maximum.accumulate(mask, axis=0) & np.maximum.accumulate(mask[::-1], axis=0)[::-1]


def dome_top(thorax: np.ndarray, lungs: np.ndarray) -> int:
    """Axial index of the top of the right hemidiaphragm: the highest lowest-thorax voxel over the columns lateral
    to the right lung's centre (free of the heart), from a median-smoothed map of those lowest voxels. Above it no
    abdomen lies inside the thoracic cavity (the left dome sits lower).

    Only columns holding at least ``DOME_COLUMN_FRACTION`` of the thorax's height *of right lung* count: a column over
    the dome runs from the diaphragm up through the lung. Columns of fluid-density tissue alone (read as effusion in
    a generated chest wall, beside the apex or down the lateral wall, ending anywhere) say nothing about the
    diaphragm, and taking one for it would cut the heart away. Fluid under the lung (a real effusion in the
    costophrenic recess) still sets its column's lowest voxel."""
    right = lungs == 2
    centre = int(np.ceil(np.argwhere(right)[:, 0].mean()))
    columns = thorax.copy()
    columns[:centre] = right[:centre] = False
    levels = np.flatnonzero(thorax.any(axis=(0, 1)))
    height = right.sum(axis=2)
    present = height >= min(DOME_COLUMN_FRACTION * (levels[-1] - levels[0] + 1), height.max())
    lowest = np.where(present, np.argmax(columns, axis=2), -1)
    # a 3×3 median over columns and the rim dropped: single columns where a thin recess was missed do not count
    smooth = ndi.median_filter(lowest, size=3, mode="nearest")
    inner = ndi.binary_erosion(present)
    return int(smooth[inner].max() if inner.any() else lowest[present].max())


def _totalseg_runs(fast: bool = False) -> dict[str, totalseg_backend.TaskRun]:
    """Mask group → the TotalSegmentator run that makes it (lungs and heart share one ``total`` run)."""
    sides = {name: 1 if name.endswith("_left") else 2 for name in totalseg_backend.LOBE_CLASSES}
    total = totalseg_backend.TaskRun(
        totalseg_backend.LOBE_TASK,
        {"lungs": sides, "heart": {"heart": 1}},
        fast=fast,
        roi_subset=(*totalseg_backend.LOBE_CLASSES, "heart"),
    )
    airway = totalseg_backend.TaskRun(totalseg_backend.VESSEL_TASK, {"airway": {"lung_trachea_bronchia": 1}})
    effusion = totalseg_backend.TaskRun(totalseg_backend.EFFUSION_TASK, {"effusion": {"pleural_effusion": 1}})
    return {"lungs": total, "heart": total, "airway": airway, "effusion": effusion}


@register_backend("totalsegmentator")
class TotalSegmentatorMeasureBackend(Backend):
    """TotalSegmentator through :class:`scripts.anatomy.totalseg_backend.TotalSegmentatorBackend` (optional).

    Each task runs at most once per CT (lungs and heart come from one ``total`` run). Nothing is downloaded: the
    weight folders each task needs are checked first (:meth:`check`), and a missing package or folder is a
    one-line error naming what is missing and where to put it.

    Args:
        device: ``auto`` (GPU when torch sees one), ``cpu`` or ``cuda``.
        options: the mask backend's options: ``totalseg_python`` (interpreter of a separate TotalSegmentator
            environment; else ``MEDSYN_TOTALSEG_PYTHON``; else in-process), ``totalseg_fast`` (3 mm ``total``
            model), ``timeout_s``.
    """

    def __init__(self, device: str = "auto", **options: Any) -> None:
        self.segmenter = totalseg_backend.TotalSegmentatorBackend(device=device, **options)
        self.runs = _totalseg_runs(bool(options.get("totalseg_fast", False)))
        self._ct: np.ndarray | None = None
        self._masks: dict[str, np.ndarray] = {}

    def check(self, groups: Sequence[str]) -> None:
        runs = list({id(self.runs[g]): self.runs[g] for g in groups if g in self.runs}.values())
        self.segmenter.check_runs(runs)

    def _mask(self, ct: np.ndarray, spacing: np.ndarray, group: str) -> np.ndarray:
        if self._ct is not ct:
            self._ct, self._masks = ct, {}
        if group not in self._masks:
            self._masks.update(self.segmenter.run_tasks(ct, spacing, [self.runs[group]]))
        return self._masks[group]

    def lungs(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        return self._mask(ct, spacing, "lungs")

    def airway(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        return self._mask(ct, spacing, "airway")

    def effusion(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        return split_sides(self._mask(ct, spacing, "effusion"), _body_centre_x(ct, masks["lungs"]))

    def heart(self, ct: np.ndarray, spacing: np.ndarray, masks: dict) -> np.ndarray:
        return self._mask(ct, spacing, "heart")


def get_backend(name: str | Backend, **options: Any) -> Backend:
    """A backend instance by name, built with ``options`` (or the instance itself)."""
    if isinstance(name, Backend):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown anatomy backend {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name](**options)


# --- measures --------------------------------------------------------------------------------------------------
def widths(heart: np.ndarray, thorax: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Cardiothoracic ratio: the axial slice where the heart is widest along x, and the thorax width there.

    Widths are voxel extents (last - first + 1) times the x spacing. An empty heart gives NaN.
    """
    heart_x = heart.any(axis=1)  # (x, z)
    thorax_x = thorax.any(axis=1)
    if not heart_x.any():
        return {"heart_width_mm": float("nan"), "thorax_width_mm": float("nan"), "cardiothoracic_ratio": float("nan")}

    def extent(column: np.ndarray) -> int:
        idx = np.flatnonzero(column)
        return int(idx[-1] - idx[0] + 1) if len(idx) else 0

    per_slice = [extent(heart_x[:, z]) for z in range(heart.shape[2])]
    z = int(np.argmax(per_slice))
    heart_mm = per_slice[z] * float(spacing[0])
    thorax_mm = extent(thorax_x[:, z] | heart_x[:, z]) * float(spacing[0])
    return {"heart_width_mm": heart_mm, "thorax_width_mm": thorax_mm, "cardiothoracic_ratio": heart_mm / thorax_mm}


def measures_summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sd and n of each measure over volumes (NaN values, e.g. no heart found, are left out and counted)."""
    out = {}
    for key in rows[0] if rows else ():
        values = np.array([r[key] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = {
            "mean": float(finite.mean()) if len(finite) else float("nan"),
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            "n": int(len(finite)),
            "missing": int(len(values) - len(finite)),
        }
    return out


def measure_ct(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    masks: dict[str, np.ndarray] | None = None,
    measures: Iterable[str] | None = None,
    backend: str | Backend = "classical",
) -> dict[str, float]:
    """Anatomy measures of one CT.

    Args:
        ct_hu: CT in HU, indexed (x, y, z) in RAS.
        spacing: voxel size (mm).
        masks: optional given masks: ``lobe`` (0..5, lungmask order: 1-2 left, 3-5 right) or ``lungs``
            (0/1 left/2 right), ``airway``, ``heart``, ``effusion`` (0/1 left/2 right); given masks are used as
            they are, the backend makes the rest.
        measures: keys of :data:`MEASURES` to compute (default all); only the masks they need are made.
        backend: ``classical`` (offline) or ``totalsegmentator``, or a :class:`Backend` instance.
    Returns:
        ``{measure: value}`` for the measures asked for.
    """
    ct, spacing = _check(ct_hu, spacing)
    wanted = list(MEASURES) if measures is None else list(measures)
    unknown = [m for m in wanted if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measures {unknown}; expected some of {sorted(MEASURES)}")
    given = dict(masks or {})
    if "lobe" in given and "lungs" not in given:
        lobe = np.asarray(given.pop("lobe"))
        given["lungs"] = lung_sides(lobe)
    for name, mask in given.items():
        if np.shape(mask) != ct.shape:
            raise ValueError(f"mask {name!r} has shape {np.shape(mask)}, the CT {ct.shape}")
    groups = {MEASURES[m][1] for m in wanted}
    needed = [g for g in GROUPS if any(g in _NEEDS[h] for h in groups)]
    to_make = [g for g in needed if g not in given]
    provider = get_backend(backend) if to_make else None
    if provider is not None:
        provider.check(to_make)
    made: dict[str, np.ndarray] = {}
    for group in needed:
        made[group] = np.asarray(given[group]) if group in given else getattr(provider, group)(ct, spacing, made)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, float] = {}
    if "lungs" in groups:
        lungs = made["lungs"]
        out["lung_volume_ml_left"] = float((lungs == 1).sum()) * voxel_ml
        out["lung_volume_ml_right"] = float((lungs == 2).sum()) * voxel_ml
        out["lung_volume_ml"] = out["lung_volume_ml_left"] + out["lung_volume_ml_right"]
    if "laa" in groups:  # the airway lumen inside the lungs is air by nature, not emphysema
        inside = (made["lungs"] > 0) & (made["airway"] == 0)
        out["laa950_percent"] = 100.0 * float((ct[inside] < LAA_HU).mean()) if inside.any() else float("nan")
    if "airway" in groups:
        out["airway_volume_mm3"] = float((made["airway"] > 0).sum()) * voxel_ml * 1000.0
    if "effusion" in groups:
        fluid = made["effusion"]
        out["effusion_ml_left"] = float((fluid == 1).sum()) * voxel_ml
        out["effusion_ml_right"] = float((fluid == 2).sum()) * voxel_ml
        out["effusion_ml"] = out["effusion_ml_left"] + out["effusion_ml_right"]
    if "heart" in groups:
        thorax = (made["lungs"] > 0) | (made["effusion"] > 0)
        out.update(widths(np.asarray(made["heart"]) > 0, thorax, spacing))
    return {m: out[m] for m in wanted}
