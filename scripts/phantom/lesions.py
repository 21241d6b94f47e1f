"""Paint resolved findings onto a normal subject (cardiomegaly is not here: it sets the heart size in ``Anatomy``).

Each painter picks the voxels of its lesion by ranking a score over the candidate voxels and taking exactly the
number the target asks for, so measured volumes and fractions land on their targets at every grid size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .build import Volumes
from .findings import LEFT_LOBES, RIGHT_LOBES, Finding
from .geometry import smooth_noise, sphere_box
from .tissues import LUNG_TISSUES, PARENCHYMA, Tissue, lut

_PARENCHYMA = lut(*PARENCHYMA)
_LUNG = lut(*LUNG_TISSUES)
_FLUID_CAN_FILL = lut(*LUNG_TISSUES, Tissue.AIRWAY_LUMEN)
MAX_EFFUSION_FRACTION = 0.7  # never fill more than this share of a hemithorax's lung with fluid


def _side_slice(v: Volumes, side: str) -> slice:
    """Index range along x of one side of the body (RAS: the patient's right is +x)."""
    first_right = int(np.searchsorted(v.grid.axis(), v.anatomy.cx, side="right"))
    return slice(first_right, v.grid.size) if side == "right" else slice(0, first_right)


def _lobes(side: str) -> tuple[int, ...]:
    return {"left": LEFT_LOBES, "right": RIGHT_LOBES, "bilateral": LEFT_LOBES + RIGHT_LOBES}[side]


def _box_of(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    objects = ndimage.find_objects(mask.astype(np.uint8))
    return objects[0] if objects else None


def effusion(v: Volumes, side: str, target_ml: float) -> dict[str, float]:
    """Dependent pleural fluid in one hemithorax: fills the lung from posterior (−y, the patient lies supine) up
    to a horizontal level, climbing a little along the lateral chest wall (meniscus); the lung just above the
    level is compressed (atelectasis). Airway and vessel labels inside the fluid are removed."""
    anat, grid = v.anatomy, v.grid
    xs = _side_slice(v, side)
    tissue = v.tissue[xs]
    cand = _FLUID_CAN_FILL[tissue] & (v.lobe_region[xs] > 0)
    ix, iy, iz = np.nonzero(cand)
    if len(ix) == 0:
        return {"level_mm": float("nan"), "requested_ml": target_ml}
    x = grid.axis()[xs][ix]
    y, z = grid.axis()[iy], grid.axis()[iz]
    lateral = np.clip((np.abs(x - anat.cx) - 0.5 * anat.cav_a) / (0.5 * anat.cav_a), 0, 1)
    key = (y - anat.cy) - 25.0 * lateral**2 + 0.08 * z
    voxel_ml = grid.spacing**3 / 1000.0
    k = int(min(round(target_ml / voxel_ml), MAX_EFFUSION_FRACTION * len(key)))
    if k <= 0:
        return {"level_mm": float("nan"), "requested_ml": target_ml}
    order = np.argpartition(key, k - 1)
    fill, rest = order[:k], order[k:]
    level = float(key[fill].max())
    sub_v, sub_a = v.vessel[xs], v.airway[xs]
    tissue[ix[fill], iy[fill], iz[fill]] = Tissue.EFFUSION
    sub_v[ix[fill], iy[fill], iz[fill]] = False
    sub_a[ix[fill], iy[fill], iz[fill]] = False
    near = rest[key[rest] < level + 7.0]
    squash = near[_PARENCHYMA[tissue[ix[near], iy[near], iz[near]]]]
    tissue[ix[squash], iy[squash], iz[squash]] = Tissue.ATELECTASIS
    return {"level_mm": round(level, 2), "requested_ml": target_ml}


def emphysema(v: Volumes, side: str, fraction: float, rng: np.random.Generator) -> dict[str, float]:
    """Low-attenuation areas (< -950 HU) over ``fraction`` of the affected lung(s), patchy, upper-lobe predominant
    (centrilobular pattern)."""
    anat, grid = v.anatomy, v.grid
    lobes = np.isin(v.lobe_region, _lobes(side))
    box = _box_of(lobes)
    if box is None:
        return {}
    tissue = v.tissue[box]
    lung = lobes[box] & _LUNG[tissue]
    cand = lung & lut(Tissue.LUNG, Tissue.FISSURE)[tissue]
    field = smooth_noise(tissue.shape, grid.spacing, 12.0, rng)
    idx = np.nonzero(cand)
    z = grid.axis(box[2].start, box[2].stop)[idx[2]]
    upper = (z - anat.z_dia_left) / (anat.z_apex - anat.z_dia_left)
    score = field[idx] + 1.2 * upper + 0.6 * rng.standard_normal(len(z)).astype(np.float32)
    k = int(min(round(fraction * int(lung.sum())), len(score)))
    if k > 0:
        chosen = np.argpartition(-score, k - 1)[:k]
        tissue[idx[0][chosen], idx[1][chosen], idx[2][chosen]] = Tissue.EMPHYSEMA
    return {"painted_fraction": round(k / max(int(lung.sum()), 1), 4)}


def bullae(
    v: Volumes, side: str, count: int, radius_range: tuple[float, float], rng: np.random.Generator
) -> list[dict[str, object]]:
    """Thin-walled air spaces (about -1000 HU) in the upper lung, near the pleura."""
    anat = v.anatomy
    sign = 1.0 if side == "right" else -1.0
    placed = []
    for _ in range(count):
        radius = float(rng.uniform(*radius_range))
        for _ in range(60):
            centre = np.array(
                [
                    anat.cx + sign * rng.uniform(0.35, 0.85) * anat.cav_a,
                    anat.cy + rng.uniform(-0.6, 0.7) * anat.cav_b,
                    rng.uniform(anat.z_carina - 10, anat.z_apex - 0.6 * radius),
                ]
            )
            if anat.lobe_at(centre) in _lobes(side):
                break
        hit = sphere_box(v.grid, centre, radius + 1.5)
        if hit is None:
            continue
        box, dist = hit
        sub = v.tissue[box]
        sub[(dist <= radius + 1.5) & (dist > radius) & _PARENCHYMA[sub]] = Tissue.FISSURE  # the thin wall
        sub[(dist <= radius) & _PARENCHYMA[sub]] = Tissue.BULLA
        v.vessel[box][dist <= radius] = False
        placed.append(
            {
                "centre_mm": [round(float(c), 1) for c in centre],
                "radius_mm": round(radius, 1),
                "lobe": anat.lobe_at(centre),
            }
        )
    return placed


def consolidation(v: Volumes, lobe: int, fraction: float, rng: np.random.Generator) -> dict[str, float]:
    """Airspace consolidation over ``fraction`` of one lobe, dependent-predominant, sparing the airway lumen
    (air bronchograms)."""
    anat, grid = v.anatomy, v.grid
    in_lobe = v.lobe_region == lobe
    box = _box_of(in_lobe)
    if box is None:
        return {}
    tissue = v.tissue[box]
    lung = in_lobe[box] & _LUNG[tissue]
    cand = lung & _PARENCHYMA[tissue]
    field = smooth_noise(tissue.shape, grid.spacing, 18.0, rng)
    idx = np.nonzero(cand)
    y = grid.axis(box[1].start, box[1].stop)[idx[1]]
    score = field[idx] - 1.5 * (y - anat.cy) / anat.cav_b
    k = int(min(round(fraction * int(lung.sum())), len(score)))
    if k > 0:
        chosen = np.argpartition(-score, k - 1)[:k]
        tissue[idx[0][chosen], idx[1][chosen], idx[2][chosen]] = Tissue.CONSOLIDATION
    return {"painted_fraction": round(k / max(int(lung.sum()), 1), 4)}


def nodule(v: Volumes, lobe: int, diameter: float, rng: np.random.Generator) -> dict[str, object]:
    """A round solid nodule of ``diameter`` mm wholly inside ``lobe`` (a position that fits is searched for)."""
    anat, grid = v.anatomy, v.grid
    radius = diameter / 2
    where = np.flatnonzero((v.lobe_region == lobe) & (v.tissue == Tissue.LUNG))
    if len(where) == 0:
        return {}
    offsets = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]) * (radius + 4.0)
    centre = None
    for _ in range(80):
        i = np.unravel_index(int(where[rng.integers(len(where))]), grid.shape)
        candidate = grid.axis()[list(i)].astype(np.float64)
        centre = candidate
        if all(anat.lobe_at(candidate + o) == lobe for o in offsets):
            break
    hit = sphere_box(grid, centre, radius)
    if hit is not None:
        box, dist = hit
        sub = v.tissue[box]
        sub[(dist <= max(radius, 0.5 * grid.spacing)) & (_PARENCHYMA[sub] | lut(Tissue.AIRWAY_WALL)[sub])] = (
            Tissue.NODULE
        )
    return {"centre_mm": [round(float(c), 1) for c in centre], "diameter_mm": diameter}


def apply_findings(v: Volumes, findings: list[Finding], rng: np.random.Generator) -> None:
    """Paint every finding; what each painter placed is recorded in the finding's ``parameters``."""
    # order: diffuse lung disease first, focal lesions next, fluid last (it displaces whatever lung lies below it)
    order = {"emphysema": 0, "bullae": 1, "consolidation": 2, "nodule": 3, "effusion": 4, "cardiomegaly": 5}
    for f in sorted(findings, key=lambda f: order[f.type]):
        p = f.parameters
        if f.type == "effusion":
            p["placed"] = {s: effusion(v, s, p["target_ml"][s]) for s in f.sides()}
        elif f.type == "emphysema":
            p["placed"] = emphysema(v, f.side or "bilateral", p["target_fraction"], rng)
        elif f.type == "bullae":
            p["placed"] = {s: bullae(v, s, p["count"][s], tuple(p["radius_mm_range"]), rng) for s in f.sides()}
        elif f.type == "consolidation":
            p["placed"] = consolidation(v, int(f.lobe or 0), p["target_fraction"], rng)
        elif f.type == "nodule":
            p["placed"] = nodule(v, int(f.lobe or 0), p["diameter_mm"], rng)
