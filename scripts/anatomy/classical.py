"""Classical chest-CT anatomy masks: body, lungs, airway, vessels and approximate lobes, without any weights.

Every function takes a CT in HU as an array indexed (x, y, z) in RAS (+x towards the patient's right, +y anterior,
+z superior) and the voxel spacing in mm, and returns a ``uint8`` (or boolean) array on the same grid.

Methods and their limits (stated in docs/data_preparation.md as well):

- body: HU > -500, the largest 3D connected component, holes filled slice by slice (axial), so the lungs and
  airways are inside it. Objects touching the body (a cushion) stay; a separate table is dropped.
- lungs: air-like voxels (HU < -300 after light smoothing) inside the body, minus the trachea and main bronchi,
  kept when they form a large component; the two lungs are split along the thinnest column near the midline of
  each axial slice when they touch (each cut widened to its neighbouring slices' cuts, so cuts at different x leave
  no staircase joining the halves), named by their side, then filled: holes in every axial slice and concavities up to
  ``LUNG_CLOSING_MM`` are added, so vessels, nodules and consolidation *surrounded by aerated lung* are included;
  the airway lumen is removed (it has its own mask). A pleural effusion (fluid, ~15 HU) lies against the chest
  wall, not inside aerated lung: it stays out. Consolidation that reaches the chest wall over a large area cannot
  be told from fluid or chest-wall muscle by HU and stays out too (a known limit of threshold methods).
- airway: 3D region growing (26-connected: bronchi about a voxel thin run diagonally through the grid and fall
  apart under 6-connectivity) from a seed found automatically in the trachea. The threshold starts at -960 HU
  (lower, down to -995 HU, when that region is already implausibly large: emphysema touching the airways) and is
  raised in 15 HU steps until the volume grows by more than 25 % in one step (a leak into the lung), never closer
  to the median parenchyma than two robust standard deviations of it (at least 35, at most 100 HU): nearer, lung
  voxels that are dark only by noise join the tree a few at a time, too slowly to count as a leak. It finds the
  lumen down to the bronchi still darker than the lung around them. Emphysema (about -975 HU) and bullae touching
  the tree cannot be told from lumen by HU: the tree then takes some in or, lowered, loses thin bronchi.
- vessels: multiscale Hessian vesselness (Frangi's bright-tube measure, scales ``VESSEL_SCALES_MM``; the large
  scales on a block-averaged grid) inside the lungs: a voxel is vessel when it is brighter than -550 HU and on a
  tubular response. Walls of the found airways and dense regions thicker than a ``DENSE_RADIUS_MM`` ball
  (consolidation, masses) are excluded; blob centres and plates score low. Vessels are followed up to
  ``HILUM_MM`` into the hila (brighter than fat, strongly tubular, connected to the lung vessels). Edges of patchy
  consolidation, nodules and walls of undetected small airways can still be labelled vessel.
- lobes: an approximation, not a segmentation. Each lung is cut by planes placed at fixed fractions of its own
  height and depth that follow the usual course of the fissures (oblique fissure from high posterior to low
  anterior; the right horizontal fissure level with the anterior fourth rib); the cut is then moved within a
  small range to the position where the fissure is most visible (a thin plane brighter than its surroundings
  and crossed by few bright vessels), when such a plane stands out. Wrong on unusual anatomy (incomplete or
  accessory fissures, lobectomy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

BODY_HU = -500.0
LUNG_HU = -300.0  # above atelectasis (about -450), below fat and fluid
AIRWAY_START_HU = -960.0
AIRWAY_LOWEST_HU = -995.0  # the start is lowered towards this when the first region is too big (emphysema)
AIRWAY_SHED_FLOOR_HU = -980.0  # below this the lumen itself starts to shrink (partial volume)
AIRWAY_MAX_ML = 120.0  # no airway lumen is larger (adults: about 30-100 ml)
AIRWAY_STEP_HU = 15.0
AIRWAY_MAX_HU = -640.0
AIRWAY_LEAK_RATIO = 1.25  # the grown volume may grow by this factor per step before it counts as a leak
AIRWAY_MARGIN_HU = (35.0, 100.0)  # the threshold stays this far below the median parenchyma (least, most) ...
AIRWAY_MARGIN_SD = 2.0  # ... and within those bounds this many robust standard deviations of the parenchyma
AIRWAY_CONNECTIVITY = 3  # 26-connected growing: bronchi about a voxel thin run diagonally through the grid
LUNG_CLOSING_MM = 10.0
LUNG_MIN_FRACTION = 0.15  # a lung component must hold at least this fraction of the largest one
LUNG_MIN_ML = 30.0
VESSEL_SCALES_MM = (0.8, 1.4, 2.4, 3.6, 5.4)
VESSEL_HU = -550.0
VESSEL_THRESHOLD = 0.15
HILUM_MM = 20.0  # vessels are followed this far out of the lungs towards the mediastinum
HILUM_THRESHOLD = 0.45
DENSE_RADIUS_MM = 7.0  # bright regions that survive an opening of this radius are not vessels
DENSE_MIN_ML = 3.0
AIRWAY_WALL_MM = 2.0
HILUM_HU = -20.0  # between mediastinal fat (about -80) and blood (about 40)
BONE_HU = 250.0
WORK_SPACING_MM = 2.5  # grid for coarse steps (distances to the lungs, thick dense regions)

# lobe geometry priors as fractions of each lung's extent (0 = inferior / posterior, 1 = superior / anterior)
OBLIQUE_POSTERIOR_HEIGHT = 0.68  # where the oblique fissure meets the posterior surface
OBLIQUE_ANTERIOR_HEIGHT = 0.12  # where it meets the anterior surface
HORIZONTAL_HEIGHT = 0.58  # right horizontal fissure
FISSURE_SEARCH = 0.12  # the fissure search moves each plane end by up to this fraction
FISSURE_ZSCORE = 3.0  # a plane moves only to a fissure this many standard deviations above the median placement


# --- small helpers ---------------------------------------------------------------------------------------------
def _spacing(spacing: Sequence[float], ndim: int = 3) -> np.ndarray:
    spacing = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing.shape != (ndim,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"spacing must be {ndim} positive numbers in mm, got {spacing.tolist()}")
    return spacing


def _check(ct_hu: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ct = np.asarray(ct_hu)
    if ct.ndim != 3:
        raise ValueError(f"CT must be a 3D array indexed (x, y, z), got shape {ct.shape}")
    if min(ct.shape) < 8:
        raise ValueError(f"CT of shape {ct.shape} is too small to segment (need at least 8 voxels per axis)")
    return ct.astype(np.float32, copy=False), _spacing(spacing)


def _smooth(ct: np.ndarray, spacing: np.ndarray, sigma_mm: float) -> np.ndarray:
    return ndi.gaussian_filter(ct, sigma=np.maximum(sigma_mm / spacing, 0.3), mode="nearest")


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    r = np.maximum(np.floor(radius_mm / spacing), 1).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grid, spacing)) <= 1.0


def _bbox(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels, as slices (the whole array when empty)."""
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return tuple(slice(0, n) for n in mask.shape)
        out.append(slice(max(hits[0] - margins[axis], 0), min(hits[-1] + margins[axis] + 1, mask.shape[axis])))
    return tuple(out)


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _fill_slices(mask: np.ndarray, axis: int = 2) -> np.ndarray:
    """Fill holes in every 2D slice perpendicular to ``axis``."""
    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        if out[k].any():
            out[k] = ndi.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def _close(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Morphological closing by a ball of ``radius_mm`` through two distance transforms (fast for large radii)."""
    pad = np.ceil(radius_mm / spacing).astype(int) + 1
    padded = np.pad(mask, [(p, p) for p in pad])
    dilated = ndi.distance_transform_edt(~padded, sampling=spacing) <= radius_mm
    closed = ndi.distance_transform_edt(dilated, sampling=spacing) > radius_mm
    return closed[tuple(slice(p, -p) for p in pad)] | mask


def _work_factors(spacing: np.ndarray, target_mm: float) -> np.ndarray:
    return np.maximum(np.floor(target_mm / spacing), 1).astype(int)


def _coarse(mask: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Block-wise "any" of a boolean mask (a cheap, conservative downsampling)."""
    pads = [(0, (-n) % f) for n, f in zip(mask.shape, factors)]
    padded = np.pad(mask, pads)
    shape = []
    for n, f in zip(padded.shape, factors):
        shape += [n // f, f]
    return padded.reshape(shape).any(axis=(1, 3, 5))


def _fine(coarse: np.ndarray, factors: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour upsampling that inverts :func:`_coarse` exactly onto ``shape``."""
    index = [np.minimum(np.arange(n) // f, c - 1) for n, f, c in zip(shape, factors, coarse.shape)]
    return coarse[np.ix_(*index)]


# --- body ------------------------------------------------------------------------------------------------------
def segment_body(ct_hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The patient's body (boolean), lungs and airways included.

    Args:
        ct_hu: CT in HU, indexed (x, y, z) in RAS.
        spacing: voxel size (sx, sy, sz) in mm.
    """
    ct, spacing = _check(ct_hu, spacing)
    dense = ct > BODY_HU
    if not dense.any():
        return np.zeros(ct.shape, dtype=bool)
    # opening by a small ball drops thin bridges to a table or cushion before choosing the largest component
    opened = ndi.binary_opening(dense, structure=_ball(2.0, spacing))
    body = _largest(opened if opened.any() else dense)
    body = ndi.binary_dilation(body, structure=_ball(2.0, spacing)) & dense | body
    return _fill_slices(body, axis=2)


# --- airway ----------------------------------------------------------------------------------------------------
def _trachea_seed(smooth: np.ndarray, spacing: np.ndarray, body: np.ndarray) -> tuple[int, int, int] | None:
    """A voxel inside the trachea: the most central round air region in the upper part of the chest."""
    inside = body & ~ndi.binary_dilation(~body, iterations=2)
    body_x = np.flatnonzero(body.any(axis=(1, 2)))
    if body_x.size == 0:
        return None
    centre_x = (body_x[0] + body_x[-1]) / 2
    width_x = (body_x[-1] - body_x[0] + 1) * spacing[0]
    pixel_area = spacing[0] * spacing[1]
    z_top = np.flatnonzero(body.any(axis=(0, 1)))
    best: tuple[float, tuple[int, int, int]] | None = None
    # look through the upper 45 % of the body's height, top down
    z_hi, z_lo = int(z_top[-1]), int(z_top[-1] - 0.45 * (z_top[-1] - z_top[0]))
    step = max(1, int(round(3.0 / spacing[2])))
    for z in range(z_hi, z_lo, -step):
        air = (smooth[:, :, z] < -800) & inside[:, :, z]
        labels, n = ndi.label(air)
        if n == 0:
            continue
        areas = ndi.sum_labels(np.ones_like(air, dtype=np.float32), labels, index=np.arange(1, n + 1)) * pixel_area
        centres = ndi.center_of_mass(air, labels, index=np.arange(1, n + 1))
        for area, (cx, cy) in zip(areas, centres):
            offset = abs(cx - centre_x) * spacing[0]
            if not (40.0 <= area <= 900.0) or offset > 0.12 * width_x:
                continue
            ix, iy = int(round(cx)), int(round(cy))
            if not air[ix, iy]:
                continue
            score = offset - 0.2 * (z - z_lo) * spacing[2]  # central first, then higher up
            if best is None or score < best[0]:
                best = (score, (ix, iy, z))
        if best is not None and z < z_hi - 10 * step:
            break
    return None if best is None else best[1]


def _grow_airway(smooth: np.ndarray, spacing: np.ndarray, seed: tuple[int, int, int], limit_hu: float) -> np.ndarray:
    """Region growing from ``seed``: the threshold is raised up to ``limit_hu`` while the volume does not explode.

    When the region at the start threshold is already too big (emphysema touching the airways), the start is
    lowered first, down to ``AIRWAY_LOWEST_HU``.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0

    def grow(threshold: float) -> np.ndarray:
        candidate = smooth < threshold
        if not candidate[seed]:
            return np.zeros(smooth.shape, dtype=bool)
        labels, _ = ndi.label(candidate, structure=ndi.generate_binary_structure(3, AIRWAY_CONNECTIVITY))
        return labels == labels[seed]

    threshold = AIRWAY_START_HU
    best = grow(threshold)
    while best.sum() * voxel_ml > AIRWAY_MAX_ML and threshold > AIRWAY_LOWEST_HU:
        threshold = max(threshold - AIRWAY_STEP_HU / 3, AIRWAY_LOWEST_HU)
        best = grow(threshold)
    if best.sum() * voxel_ml > AIRWAY_MAX_ML:
        return np.zeros(smooth.shape, dtype=bool)  # no airway separable from the lung
    if threshold < AIRWAY_START_HU:  # lowered: go on while each step still sheds much (emphysema still attached)
        while threshold > AIRWAY_SHED_FLOOR_HU:
            lower = grow(max(threshold - AIRWAY_STEP_HU / 3, AIRWAY_SHED_FLOOR_HU))
            if not lower.any() or lower.sum() * AIRWAY_LEAK_RATIO >= best.sum():
                break
            threshold, best = max(threshold - AIRWAY_STEP_HU / 3, AIRWAY_SHED_FLOOR_HU), lower
    previous = best.sum() * voxel_ml
    threshold += AIRWAY_STEP_HU
    while threshold <= min(AIRWAY_MAX_HU, limit_hu):
        grown = grow(threshold)
        volume = grown.sum() * voxel_ml
        if previous > 0 and (volume > AIRWAY_LEAK_RATIO * previous + 0.5 or volume > AIRWAY_MAX_ML):
            break  # leaked into the parenchyma: keep the last good tree
        if volume > 0:
            best, previous = grown, volume
        threshold += AIRWAY_STEP_HU
    return best


def _airway(smooth: np.ndarray, spacing: np.ndarray, body: np.ndarray) -> np.ndarray:
    seed = _trachea_seed(smooth, spacing, body)
    if seed is None:
        return np.zeros(smooth.shape, dtype=bool)
    # grow inside the body's bounding box only (cheaper, and outside air can never join)
    box = _bbox(body)
    local_seed = tuple(s - b.start for s, b in zip(seed, box))
    local = np.where(body[box], smooth[box], 0.0).astype(np.float32)
    # the aerated parenchyma's typical value caps the threshold (emphysema lowers it, and the cap with it)
    parenchyma = local[(local < LUNG_HU) & (local > -1024.0)]
    if parenchyma.size:
        median = float(np.median(parenchyma))
        spread = 1.4826 * float(np.median(np.abs(parenchyma - median)))
        limit = median - float(np.clip(AIRWAY_MARGIN_SD * spread, *AIRWAY_MARGIN_HU))
    else:
        limit = AIRWAY_MAX_HU
    airway = np.zeros(smooth.shape, dtype=bool)
    airway[box] = _grow_airway(local, spacing, local_seed, limit)
    return airway


def segment_airway(ct_hu: np.ndarray, spacing: Sequence[float], lungs: np.ndarray | None = None) -> np.ndarray:
    """Airway lumen (trachea and bronchi) as a ``uint8`` mask {0, 1}.

    Args:
        ct_hu: CT in HU, indexed (x, y, z) in RAS.
        spacing: voxel size in mm.
        lungs: unused by the region growing itself; when given, airway found entirely outside both the lungs'
            and the trachea's span is dropped (a guard against seeds in the oesophagus or bowel gas).
    """
    ct, spacing = _check(ct_hu, spacing)
    smooth = _smooth(ct, spacing, 0.6)
    body = segment_body(ct, spacing)
    airway = _airway(smooth, spacing, body)
    if lungs is not None and airway.any() and np.asarray(lungs).any():
        lung_z = np.flatnonzero(np.asarray(lungs).any(axis=(0, 1)))
        airway_z = np.flatnonzero(airway.any(axis=(0, 1)))
        if airway_z[0] > lung_z[-1]:  # never reaches the lungs' level: not an airway
            airway[:] = False
    return airway.astype(np.uint8)


# --- lungs -----------------------------------------------------------------------------------------------------
def _split_merged(lung: np.ndarray, centre_x: float) -> np.ndarray:
    """Cut one component holding both lungs along the thinnest column near the midline of every axial slice.

    Each slice's cut also spans the x range up to its neighbouring slices' cuts: cuts at different x on adjacent
    slices would otherwise leave a staircase through which the halves stay connected across slices."""
    out = lung.copy()
    half = max(3, int(0.12 * lung.shape[0]))
    lo, hi = max(int(centre_x) - half, 0), min(int(centre_x) + half + 1, lung.shape[0])
    cuts: dict[int, int] = {}
    for z in range(lung.shape[2]):
        plane = lung[:, :, z]
        if plane[lo:hi].any():
            counts = plane[lo:hi].sum(axis=1)
            cuts[z] = lo + int(np.argmin(counts + 1e-3 * np.abs(np.arange(lo, hi) - centre_x)))
    for z, x in cuts.items():
        near = [cuts.get(n, x) for n in (z - 1, z, z + 1)]
        out[max(min(near) - 1, 0) : max(near) + 2, :, z] = False
    return out


def _lung_components(air: np.ndarray, spacing: np.ndarray, centre_x: float) -> list[np.ndarray]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndi.label(air)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel()).astype(np.float64)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    big = sizes >= LUNG_MIN_FRACTION * sizes[order[0]]
    keep = [k for k in order[:4] if big[k] and sizes[k] * voxel_ml >= LUNG_MIN_ML]
    parts = [labels == k for k in keep]
    if len(parts) == 1:
        xs = np.flatnonzero(parts[0].any(axis=(1, 2)))
        if xs[0] < centre_x < xs[-1] and min(centre_x - xs[0], xs[-1] - centre_x) > 0.25 * (xs[-1] - xs[0]):
            split = _split_merged(parts[0], centre_x)
            sub, m = ndi.label(split)
            if m >= 2:
                sub_sizes = np.bincount(sub.ravel())
                sub_sizes[0] = 0
                two = np.argsort(sub_sizes)[::-1][:2]
                if sub_sizes[two[1]] >= LUNG_MIN_FRACTION * sub_sizes[two[0]]:
                    seeds = np.where(np.isin(sub, two), sub, 0)
                    # give the cut voxels back to the nearer half
                    _, nearest = ndi.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
                    filled = seeds[tuple(nearest)]
                    parts = [parts[0] & (filled == two[0]), parts[0] & (filled == two[1])]
    return parts[:2]


def segment_lungs(ct_hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Lungs as ``uint8``: 0 background, 1 left lung (−x side), 2 right lung (+x side).

    Consolidation, nodules and vessels surrounded by aerated lung are included; pleural fluid is not (see the
    module docstring for the method and its limits).

    Args:
        ct_hu: CT in HU, indexed (x, y, z) in RAS.
        spacing: voxel size in mm.
    """
    ct, spacing = _check(ct_hu, spacing)
    smooth = _smooth(ct, spacing, 0.6)
    body = segment_body(ct, spacing)
    out = np.zeros(ct.shape, dtype=np.uint8)
    if not body.any():
        return out
    airway = _airway(smooth, spacing, body)
    # the trachea and main bronchi (grown a little) separate from the lungs; intrapulmonary airways come back
    # with the hole filling below
    central = ndi.binary_dilation(airway, structure=_ball(1.5, spacing))
    air = (smooth < LUNG_HU) & body & ~central
    body_x = np.flatnonzero(body.any(axis=(1, 2)))
    parts = _lung_components(air, spacing, (body_x[0] + body_x[-1]) / 2)
    if not parts:
        return out
    parts.sort(key=lambda p: float(np.flatnonzero(p.any(axis=(1, 2))).mean()))
    if len(parts) == 1:  # one lung only: name it by its side of the body's midline
        centre = (body_x[0] + body_x[-1]) / 2
        side = 1 if np.mean(np.nonzero(parts[0])[0]) < centre else 2
        labels = [side]
    else:
        labels = [1, 2]
    for part, label in zip(parts, labels):
        box = _bbox(part, margin=np.ceil(LUNG_CLOSING_MM / spacing).astype(int) + 2)
        local = _close(part[box], LUNG_CLOSING_MM, spacing)
        local = _fill_slices(local, axis=2)
        local = ndi.binary_fill_holes(local)
        region = out[box]
        region[local & (region == 0) & body[box]] = label
    # airway lumen has its own mask and is not lung (intrapulmonary bronchi included)
    out[airway] = 0
    return out


# --- vessels ---------------------------------------------------------------------------------------------------
def _symmetric_eigenvalues(a: list[np.ndarray]) -> np.ndarray:
    """Eigenvalues (N, 3) of symmetric 3×3 matrices given as their six entries (xx, yy, zz, xy, xz, yz)."""
    xx, yy, zz, xy, xz, yz = (v.astype(np.float64) for v in a)
    q = (xx + yy + zz) / 3.0
    p1 = xy**2 + xz**2 + yz**2
    p2 = (xx - q) ** 2 + (yy - q) ** 2 + (zz - q) ** 2 + 2.0 * p1
    p = np.sqrt(p2 / 6.0)
    safe = np.where(p > 1e-12, p, 1.0)
    bxx, byy, bzz = (xx - q) / safe, (yy - q) / safe, (zz - q) / safe
    bxy, bxz, byz = xy / safe, xz / safe, yz / safe
    det = bxx * (byy * bzz - byz**2) - bxy * (bxy * bzz - byz * bxz) + bxz * (bxy * byz - byy * bxz)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    e1 = q + 2.0 * p * np.cos(phi)
    e3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    e2 = 3.0 * q - e1 - e3
    eig = np.stack([e1, e2, e3], axis=-1)
    eig[p <= 1e-12] = q[p <= 1e-12, None]
    return eig


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``³ blocks (edges padded by repetition)."""
    pads = [(0, (-n) % factor) for n in image.shape]
    padded = np.pad(image, pads, mode="edge")
    shape = []
    for n in padded.shape:
        shape += [n // factor, factor]
    return padded.reshape(shape).mean(axis=(1, 3, 5), dtype=np.float32)


def _hessian_eigenvalues(image: np.ndarray, spacing: np.ndarray, sigma_mm: float, where: np.ndarray) -> np.ndarray:
    """Scale-normalised Hessian eigenvalues at the voxels ``where``, sorted by absolute value (N, 3).

    Large scales (at least 3 voxels) are computed on a block-averaged grid and read back per voxel: the result
    varies slowly at those scales and the cost falls by the block volume.
    """
    factor = max(1, int(sigma_mm / float(spacing.max()) / 1.5))
    index = np.nonzero(where)
    if factor > 1:
        image = _block_mean(image, factor)
        spacing = spacing * factor
        index = tuple(i // factor for i in index)
    sigma = sigma_mm / spacing
    entries = []
    for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        d = ndi.gaussian_filter(image, sigma=sigma, order=order, mode="nearest")
        entries.append(d[index] * (sigma_mm**2 / (spacing[i] * spacing[j])))
    eig = _symmetric_eigenvalues(entries)
    idx = np.argsort(np.abs(eig), axis=1)
    return np.take_along_axis(eig, idx, axis=1)


def vesselness(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    region: np.ndarray,
    scales_mm: Sequence[float] = VESSEL_SCALES_MM,
    alpha: float = 0.5,
    beta: float = 0.5,
    c: float = 150.0,
) -> np.ndarray:
    """Frangi's multiscale vesselness for bright tubes, computed inside ``region`` (zero elsewhere), in [0, 1].

    Args:
        ct_hu: CT in HU, indexed (x, y, z).
        spacing: voxel size in mm.
        region: boolean mask of the voxels to evaluate (the Hessian itself sees the whole neighbourhood).
        scales_mm: Gaussian scales in mm, roughly the vessel radii to find.
        alpha, beta: sensitivity to plate-like (A) and blob-like (B) structures.
        c: sensitivity to contrast, in HU (the structure-strength term).
    """
    ct, spacing = _check(ct_hu, spacing)
    region = np.asarray(region, dtype=bool)
    out = np.zeros(ct.shape, dtype=np.float32)
    if not region.any():
        return out
    pad = np.ceil(3 * max(scales_mm) / spacing).astype(int) + 1
    box = _bbox(region, margin=pad)
    image = ct[box]
    where = region[box]
    best = np.zeros(int(where.sum()), dtype=np.float64)
    for sigma_mm in scales_mm:
        eig = _hessian_eigenvalues(image, spacing, sigma_mm, where)
        l1, l2, l3 = np.abs(eig[:, 0]), np.abs(eig[:, 1]), np.abs(eig[:, 2])
        ra = l2 / np.maximum(l3, 1e-9)
        rb = l1 / np.sqrt(np.maximum(l2 * l3, 1e-18))
        s = np.sqrt(l1**2 + l2**2 + l3**2)
        v = (1 - np.exp(-(ra**2) / (2 * alpha**2))) * np.exp(-(rb**2) / (2 * beta**2))
        v *= 1 - np.exp(-(s**2) / (2 * c**2))
        v[(eig[:, 1] > 0) | (eig[:, 2] > 0)] = 0.0  # bright tubes only
        np.maximum(best, v, out=best)
    local = np.zeros(image.shape, dtype=np.float32)
    local[where] = best
    out[box] = local
    return out


def _open(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Morphological opening by a ball of ``radius_mm`` through two distance transforms."""
    eroded = ndi.distance_transform_edt(mask, sampling=spacing) > radius_mm
    if not eroded.any():
        return eroded
    return (ndi.distance_transform_edt(~eroded, sampling=spacing) <= radius_mm) & mask


def _drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Remove 26-connected components smaller than ``min_voxels`` (thin diagonal vessels stay connected)."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes < min_voxels
    small[0] = False
    return mask & ~small[labels]


def segment_vessels(
    ct_hu: np.ndarray, spacing: Sequence[float], lungs: np.ndarray | None = None, airway: np.ndarray | None = None
) -> np.ndarray:
    """Pulmonary vessels in the lungs and at the hila as a ``uint8`` mask {0, 1}.

    Args:
        ct_hu: CT in HU, indexed (x, y, z) in RAS.
        spacing: voxel size in mm.
        lungs: lung mask (any nonzero value is lung) from :func:`segment_lungs` or a lobe map; computed when None.
        airway: airway lumen mask from :func:`segment_airway` (its walls are not vessels); computed when None.
    """
    ct, spacing = _check(ct_hu, spacing)
    lung = (segment_lungs(ct, spacing) if lungs is None else np.asarray(lungs)) > 0
    if lung.shape != ct.shape:
        raise ValueError(f"lungs mask shape {lung.shape} differs from the CT's {ct.shape}")
    if not lung.any():
        return np.zeros(ct.shape, dtype=np.uint8)
    airway = (segment_airway(ct, spacing) if airway is None else np.asarray(airway)) > 0
    box = _bbox(lung, margin=np.ceil((HILUM_MM + 3 * max(VESSEL_SCALES_MM)) / spacing).astype(int) + 1)
    local_ct, local_lung, local_airway = ct[box], lung[box], airway[box]
    # distances to the lungs only decide "within HILUM_MM": a coarse grid (about 2.5 mm) is accurate enough
    factors = _work_factors(spacing, WORK_SPACING_MM)
    coarse_lung = _coarse(local_lung, factors)
    coarse_distance = ndi.distance_transform_edt(~coarse_lung, sampling=spacing * factors)
    distance = np.where(local_lung, 0.0, np.maximum(_fine(coarse_distance, factors, local_lung.shape), 1e-3))
    # the hila: outside the lungs, near them and between them (medial), not bone
    xs = np.nonzero(local_lung)[0]
    x_index = np.arange(local_ct.shape[0])[:, None, None]
    if lungs is not None and np.asarray(lungs).max() >= 2:
        sides = np.asarray(lungs)[box]
        between = (x_index > np.nonzero(sides == 1)[0].mean()) & (x_index < np.nonzero(sides >= 2)[0].mean())
    else:
        between = np.abs(x_index - xs.mean()) < 0.25 * np.ptp(xs)
    hilum = (distance > 0) & (distance <= HILUM_MM) & between
    # vessels are brighter than aerated lung inside the lungs and brighter than fat outside them
    bright = np.where(local_lung, local_ct > VESSEL_HU, (local_ct > HILUM_HU) & (local_ct < BONE_HU))
    # consolidation and masses: bright regions thicker than any vessel inside the lungs
    # (on the coarse grid: a 7 mm ball is several coarse voxels wide)
    coarse_bright = _block_mean((bright & local_lung).astype(np.float32), int(factors.min())) > 0.5
    coarse_spacing = spacing * int(factors.min())
    dense = _open(coarse_bright, DENSE_RADIUS_MM, coarse_spacing)
    dense = _drop_small(dense, int(DENSE_MIN_ML * 1000.0 / float(np.prod(coarse_spacing))))
    dense = _fine(dense, np.full(3, int(factors.min())), local_lung.shape) & bright
    wall_mm = max(AIRWAY_WALL_MM, 1.05 * float(spacing.max()))
    # an all-False array, not a scalar 0, when no airway was found: `~(0 > 0)` is the integer -1, which made the
    # candidates an integer array and every later mask index a gather along x (a wrong result, or a MemoryError)
    wall = ndi.binary_dilation(local_airway, structure=_ball(wall_mm, spacing)) if local_airway.any() else local_airway
    candidates = bright & (local_lung | hilum) & ~wall & ~dense
    v = vesselness(_smooth(local_ct, spacing, 0.5), spacing, candidates)
    # the vesselness is strongest on the centre line: accept bright voxels next to a tubular response
    near = ndi.binary_dilation(v > VESSEL_THRESHOLD, structure=_ball(1.5, spacing))
    inside = candidates & local_lung & near
    # at the hila keep tubular bright voxels connected to the vessels inside the lungs
    outside = candidates & hilum & (v > HILUM_THRESHOLD)
    labels, n = ndi.label(inside | outside, structure=np.ones((3, 3, 3), dtype=bool))
    connected = np.zeros(n + 1, dtype=bool)
    connected[np.unique(labels[inside])] = True
    connected[0] = False
    local = connected[labels]
    local = _drop_small(local, max(3, int(round(3.0 / float(np.prod(spacing))))))
    vessel = np.zeros(ct.shape, dtype=np.uint8)
    vessel[box] = local
    return vessel


# --- lobes -----------------------------------------------------------------------------------------------------
def _normalised_coordinates(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height (0 inferior → 1 superior) and depth (0 posterior → 1 anterior) of each voxel of ``mask``."""
    idx = np.nonzero(mask)
    y, z = idx[1].astype(np.float64), idx[2].astype(np.float64)
    height = (z - z.min()) / max(z.max() - z.min(), 1.0)
    depth = (y - y.min()) / max(y.max() - y.min(), 1.0)
    return height, depth


def _fissure_evidence(ct: np.ndarray, spacing: np.ndarray, lung: np.ndarray, vessel: np.ndarray | None) -> np.ndarray:
    """Per-voxel fissure evidence inside ``lung``: bright thin plates score high, vessel voxels negative."""
    eig = _hessian_eigenvalues(ct, spacing, 1.0, lung)
    l1, l2, l3 = np.abs(eig[:, 0]), np.abs(eig[:, 1]), eig[:, 2]
    plate = np.where(l3 < 0, -l3, 0.0) * np.exp(-((np.maximum(l1, l2) / np.maximum(np.abs(l3), 1e-9)) ** 2) / 0.18)
    evidence = plate / (np.percentile(plate, 99) + 1e-9)
    if vessel is not None:
        evidence = evidence - 0.5 * vessel[lung]
    return evidence


def _best_plane(
    height: np.ndarray,
    depth: np.ndarray,
    evidence: np.ndarray | None,
    prior: tuple[float, float],
    band: float,
    tilted: bool = True,
) -> tuple[float, float]:
    """Move the plane ``height = lo + (hi - lo) * (1 - depth)`` to where the mean evidence in a thin band peaks.

    With ``tilted=False`` the plane is horizontal at ``hi`` (``lo`` is kept) and only its height is searched.
    """
    if evidence is None:
        return prior
    offsets = np.linspace(-FISSURE_SEARCH, FISSURE_SEARCH, 9)
    lo_offsets = offsets if tilted else np.zeros(1)
    scores = np.full((lo_offsets.size, offsets.size), -np.inf)
    for i, d_lo in enumerate(lo_offsets):
        for j, d_hi in enumerate(offsets):
            lo, hi = prior[0] + d_lo, prior[1] + d_hi
            plane = lo + (hi - lo) * (1.0 - depth) if tilted else np.full(height.shape, hi)
            distance = np.abs(height - plane)
            near = distance < band
            if near.sum() > 20:
                scores[i, j] = float(evidence[near].mean())
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return prior
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    # move only when the peak stands out from the other placements (a visible fissure)
    if scores[i, j] - np.median(finite) < FISSURE_ZSCORE * (np.std(finite) + 1e-9) or scores[i, j] <= 0:
        return prior
    return prior[0] + lo_offsets[i], prior[1] + offsets[j]


def approximate_lobes(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    lungs: np.ndarray | None = None,
    detect_fissures: bool = True,
) -> np.ndarray:
    """Approximate lobes as ``uint8`` 0..5 (LTRCLobes order: 1 LUL, 2 LLL, 3 RUL, 4 RML, 5 RLL).

    Each lung is cut by planes at anatomical fractions of its extent; with ``detect_fissures`` the cuts move to a
    visible fissure nearby (see the module docstring for the limits).

    Args:
        ct_hu: CT in HU, indexed (x, y, z) in RAS.
        spacing: voxel size in mm.
        lungs: 0/1/2 map from :func:`segment_lungs` (computed when None); a 0..5 lobe map is also accepted
            (1-2 left, 3-5 right).
        detect_fissures: search for the fissures near the prior planes.
    """
    ct, spacing = _check(ct_hu, spacing)
    lungs = segment_lungs(ct, spacing) if lungs is None else np.asarray(lungs)
    if lungs.shape != ct.shape:
        raise ValueError(f"lungs mask shape {lungs.shape} differs from the CT's {ct.shape}")
    if lungs.max(initial=0) > 2:  # a lobe map: fold back to left/right
        lungs = np.where(lungs == 0, 0, np.where(lungs <= 2, 1, 2)).astype(np.uint8)
    out = np.zeros(ct.shape, dtype=np.uint8)
    # vessels never cross a fissure: bright lung voxels (vessels, mostly) count against a candidate plane
    vessel = ((ct > VESSEL_HU) & (lungs > 0)).astype(np.float32) if detect_fissures else None
    for side in (1, 2):
        lung = lungs == side
        if lung.sum() < 50:
            continue
        box = _bbox(lung, margin=4)
        local_lung = lung[box]
        height, depth = _normalised_coordinates(local_lung, spacing)
        evidence = None
        if detect_fissures:
            evidence = _fissure_evidence(ct[box], spacing, local_lung, None if vessel is None else vessel[box])
        band = 1.5 * spacing[2] / max(np.ptp(np.nonzero(local_lung)[2]) * spacing[2], 1.0)
        lo, hi = _best_plane(height, depth, evidence, (OBLIQUE_ANTERIOR_HEIGHT, OBLIQUE_POSTERIOR_HEIGHT), band)
        lower = height < lo + (hi - lo) * (1.0 - depth)
        labels = np.where(lower, 2 if side == 1 else 5, 1 if side == 1 else 3).astype(np.uint8)
        if side == 2:
            level = HORIZONTAL_HEIGHT
            if evidence is not None:
                upper = ~lower
                _, level = _best_plane(height[upper], depth[upper], evidence[upper], (level, level), band, tilted=False)
            labels[~lower & (height < level)] = 4
        local = np.zeros(local_lung.shape, dtype=np.uint8)
        local[local_lung] = labels
        region = out[box]
        region[local_lung] = local[local_lung]
    return out
