"""Branching tubes: the airway tree, the pulmonary arteries and veins, and the great vessels (mm, RAS).

Trees are lists of straight segments built without any voxel grid (they ask the analytic :class:`Anatomy`
which lobe a point lies in), so one subject has the same trees at every array size. Central segments
(trachea, main bronchi, hilar vessels, aorta) lie in the mediastinum and push the lung aside; peripheral
segments lie inside a lobe and keep its label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy

AIRWAY_GENERATIONS = 4  # generations grown inside each lobe after the lobar bronchus
VESSEL_GENERATIONS = 5  # vessels branch further than airways


@dataclass(frozen=True)
class Segment:
    """A straight tapered tube from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), lengths in mm.

    Args:
        central: lies in the mediastinum / hilum: the lung is carved away around it.
        lobe: lobe (1..5) the segment feeds, 0 for central ones.
    """

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float
    central: bool = False
    lobe: int = 0


@dataclass(frozen=True)
class Trees:
    """All tubes of one subject."""

    airway: list[Segment]
    artery: list[Segment]
    vein: list[Segment]
    aorta: list[Segment]
    oesophagus: list[Segment]

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("airway", "artery", "vein", "aorta", "oesophagus")}


def lobe_centroids(anat: Anatomy, step: float = 8.0) -> dict[int, np.ndarray]:
    """Approximate centroid (mm) of each lobe, from the analytic lobes sampled on a coarse lattice."""
    ax = np.arange(-160, 160 + step, step, dtype=np.float32)
    x, y, z = ax[:, None, None], ax[None, :, None], ax[None, None, :]
    lobes = anat.lobe_of(x, y, z)
    out = {}
    for label in range(1, 6):
        idx = np.argwhere(lobes == label)
        if len(idx) == 0:
            raise RuntimeError(f"phantom subject has no lobe {label}; anatomy parameters out of range: {anat}")
        out[label] = ax[idx].mean(axis=0).astype(np.float64)
    return out


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.cross costs ~20 µs on 3-vectors (axis handling); this is called thousands of times per case
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about the unit vector ``axis``."""
    c, s = np.cos(angle), np.sin(angle)
    return v * c + _cross(axis, v) * s + axis * float(axis @ v) * (1 - c)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.sqrt(v @ v)), 1e-9)


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _unit(_cross(d, _unit(rng.standard_normal(3))))


def _grow(
    anat: Anatomy,
    rng: np.random.Generator,
    out: list[Segment],
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    lobe: int,
    generations: int,
    pull: np.ndarray,
) -> None:
    """Add a segment from ``start`` and, recursively, two daughters per bifurcation, staying inside ``lobe``.

    A segment whose end or middle would leave its lobe is shortened once, then dropped, so trees fill their
    lobes without crossing fissures or the pleura.
    """
    for scale in (1.0, 0.55):
        end = start + direction * length * scale
        if anat.lobe_at(end) == lobe and anat.lobe_at((start + end) / 2) == lobe:
            break
    else:
        return
    r_end = radius * 0.92
    out.append(Segment(tuple(start), tuple(end), radius, r_end, False, lobe))
    if generations == 0:
        return
    # daughters diverge in a plane turned at random about the parent (airway bifurcation planes alternate)
    axis = _perpendicular(direction, rng)
    towards = _unit(pull - end)
    for sign, shrink in ((1, rng.uniform(0.74, 0.86)), (-1, rng.uniform(0.62, 0.78))):
        angle = sign * np.deg2rad(rng.uniform(22, 42))
        child = _unit(_rotate(direction, axis, angle) + 0.25 * towards)
        _grow(anat, rng, out, end, child, length * rng.uniform(0.72, 0.88), r_end * shrink, lobe, generations - 1, pull)


def _lobar(
    anat: Anatomy,
    rng: np.random.Generator,
    out: list[Segment],
    root: np.ndarray,
    lobe: int,
    centroid: np.ndarray,
    radius: float,
    generations: int,
) -> None:
    """A lobar branch from a hilar ``root`` towards the lobe's centroid, then its tree inside the lobe."""
    to_c = centroid - root
    dist = float(np.linalg.norm(to_c))
    direction = _unit(to_c)
    # the lobar stem reaches into the lobe (its first point inside) before branching
    entry = root
    for t in np.linspace(0.0, 1.0, 41):
        entry = root + to_c * t
        if anat.lobe_at(entry) == lobe:
            break
    entry = entry + direction * 3.0
    out.append(Segment(tuple(root), tuple(entry), radius, radius * 0.95, True, 0))
    _grow(anat, rng, out, entry, direction, max(0.32 * dist, 12.0), radius * 0.95, lobe, generations, centroid)


def _targets(rng: np.random.Generator, centroid: np.ndarray, count: int) -> list[np.ndarray]:
    """Aim points scattered about a lobe's centroid, one per segmental stem, so stems fan out over the lobe."""
    return [centroid + rng.uniform(-28, 28, 3) for _ in range(count)]


def build_trees(anat: Anatomy, rng: np.random.Generator) -> Trees:
    """Draw the airway tree, pulmonary arteries and veins, aorta and oesophagus of one subject."""
    a, cx = anat.cav_a, anat.cx
    sx, sy = anat.spine_centre()
    zc = anat.z_carina
    cent = lobe_centroids(anat)
    rt = anat.trachea_radius
    ty = sy + 38.0 + rt  # trachea lies just in front of the oesophagus, which lies in front of the spine
    P = np.array  # short alias for points

    # --- airway: trachea → main bronchi → lobar → segmental and beyond
    carina = P([cx, ty, zc])
    airway = [Segment((cx, ty, 170.0), tuple(carina), rt, rt, True)]
    right_main = P([cx + 0.2 * a, ty - 3, zc - 16])  # right main bronchus: short and steep
    left_main = P([cx - 0.3 * a, ty - 6, zc - 28])  # left main bronchus: longer, more horizontal
    intermedius = P([cx + 0.26 * a, ty - 2, zc - 38])
    airway += [
        Segment(tuple(carina), tuple(right_main), 0.75 * rt, 0.7 * rt, True),
        Segment(tuple(carina), tuple(left_main), 0.68 * rt, 0.64 * rt, True),
        Segment(tuple(right_main), tuple(intermedius), 0.62 * rt, 0.58 * rt, True),
    ]
    for lobe, root, scale in (
        (3, right_main, 0.5),
        (4, intermedius, 0.4),
        (5, intermedius, 0.52),
        (1, left_main, 0.5),
        (2, left_main, 0.52),
    ):
        for target in _targets(rng, cent[lobe], 2):
            _lobar(anat, rng, airway, root, lobe, target, scale * rt, AIRWAY_GENERATIONS)

    # --- pulmonary arteries: trunk from the right ventricle, bifurcation under the arch, hilar branches
    hx, hy, hz = anat.heart_x, anat.heart_y, anat.heart_z
    outflow = P([hx + 0.3 * anat.heart_rx, hy + 0.45 * anat.heart_ry, hz + 0.55 * anat.heart_rz])
    bifurcation = P([cx - 6, ty + 26, zc - 10])
    right_hilum = P([cx + 0.3 * a, ty + 12, zc - 22])
    left_hilum = P([cx - 0.33 * a, ty + 2, zc - 8])
    artery = [
        Segment(tuple(outflow), tuple(bifurcation), 13.0, 12.0, True),
        Segment(tuple(bifurcation), tuple(right_hilum), 10.0, 9.0, True),
        Segment(tuple(bifurcation), tuple(left_hilum), 9.5, 8.5, True),
    ]
    for hilum, lobes in ((right_hilum, (3, 4, 5)), (left_hilum, (1, 2))):
        for lobe in lobes:
            for target in _targets(rng, cent[lobe], 2 if lobe == 4 else 3):
                _lobar(anat, rng, artery, hilum, lobe, target, 4.5 if lobe == 4 else 5.5, VESSEL_GENERATIONS)

    # --- pulmonary veins: from the left atrium (back of the heart) to each lobe, below the arteries
    atrium = P([hx + 0.25 * anat.heart_rx, hy - 0.55 * anat.heart_ry, hz + 0.3 * anat.heart_rz])
    vein: list[Segment] = []
    for side, lobes in ((1, (3, 4, 5)), (-1, (1, 2))):
        for lobe in lobes:
            root = P([cx + side * 0.22 * a, atrium[1] - 4, (atrium[2] + cent[lobe][2]) / 2])
            vein.append(Segment(tuple(atrium), tuple(root), 7.0, 6.5, True))
            for target in _targets(rng, cent[lobe], 2):
                _lobar(anat, rng, vein, root, lobe, target, 5.0, VESSEL_GENERATIONS)

    # --- aorta: ascending (right of midline), arch over the left main bronchus, descending left of the spine
    root = P([hx + 0.45 * anat.heart_rx, hy + 0.1 * anat.heart_ry, hz + 0.55 * anat.heart_rz])
    path = [
        root,
        P([cx + 12, ty + 40, zc + 22]),
        P([cx - 4, ty + 14, zc + 36]),
        P([cx - 24, ty - 16, zc + 22]),
        P([sx - 27, sy + 12, zc - 20]),
        P([sx - 25, sy + 14, -170.0]),
    ]
    radii = [14.0, 14.0, 13.0, 12.5, 12.0, 11.5]
    aorta = [Segment(tuple(p), tuple(q), r, s, True) for p, q, r, s in zip(path, path[1:], radii, radii[1:])]
    oesophagus = [Segment((sx - 4, sy + 27, 170.0), (sx - 8, sy + 30, anat.z_dia_left - 25), 8.0, 8.0, True)]
    return Trees(airway=airway, artery=artery, vein=vein, aorta=aorta, oesophagus=oesophagus)
