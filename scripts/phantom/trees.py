"""Branching tubes: the airway tree, the pulmonary arteries and veins, and the great vessels (mm, RAS).

Trees are lists of straight segments built without any voxel grid (they ask the analytic :class:`Anatomy`
which lobe a point lies in), so one subject has the same trees at every array size. Inside the lobes they are
space-filling trees (:mod:`.space_filling`, after Kitaoka et al. 1999). Central segments
(trachea, main bronchi, hilar vessels, aorta) lie in the mediastinum and push the lung aside; peripheral
segments lie inside a lobe and keep its label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy
from .space_filling import Branch, grow_tree, unit

# radii at which division stops (mm): airways near generation 8-9 (Weibel's lumen radius there is ~0.9 mm),
# vessels further, which is why the lung window shows vessels out to the pleura and airways only centrally
AIRWAY_MIN_RADIUS = 0.8
VESSEL_MIN_RADIUS = 0.5
ARTERY_TO_BRONCHUS = 1.1  # artery / companion bronchus lumen radius (a ratio above ~1.5 reads as bronchiectasis)
LATTICE_MM = 5.0  # spacing of the points that stand for a lobe's volume when its trees are grown


@dataclass(frozen=True)
class Segment:
    """A straight tapered tube from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), lengths in mm.

    Args:
        central: lies in the mediastinum / hilum: the lung is carved away around it.
        lobe: lobe (1..5) the segment feeds, 0 for central ones.
        generation: branching generation (trachea 0, main bronchi 1, lobar 2, segmental 3, ...); 0 for the
            great vessels.
    """

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float
    central: bool = False
    lobe: int = 0
    generation: int = 0


@dataclass(frozen=True)
class Trees:
    """All tubes of one subject."""

    airway: list[Segment]
    artery: list[Segment]
    vein: list[Segment]
    great_vessels: list[Segment]  # aorta with its arch branches, superior vena cava (blood, not labelled vessel)
    oesophagus: list[Segment]

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("airway", "artery", "vein", "great_vessels", "oesophagus")}


def lobe_points(anat: Anatomy, step: float = LATTICE_MM) -> dict[int, np.ndarray]:
    """The points (N, 3), mm, of a ``step``-mm lattice that fall in each lobe (1..5) of the analytic lungs."""
    ax = np.arange(-160, 160 + step, step, dtype=np.float64)
    x, y, z = ax[:, None, None], ax[None, :, None], ax[None, None, :]
    lobes = anat.lobe_of(x, y, z)
    out = {}
    for label in range(1, 6):
        idx = np.argwhere(lobes == label)
        if len(idx) == 0:
            raise RuntimeError(f"phantom subject has no lobe {label}; anatomy parameters out of range: {anat}")
        out[label] = ax[idx]
    return out


def _inside(anat: Anatomy, lobe: int) -> Callable[[np.ndarray], bool]:
    return lambda point: anat.lobe_at(point) == lobe


def _stem(anat: Anatomy, root: np.ndarray, lobe: int, towards: np.ndarray) -> np.ndarray:
    """Where a hilar ``root`` heading for ``towards`` has entered ``lobe`` by 3 mm (the end of a lobar stem)."""
    path = towards - root
    entry = towards
    for t in np.linspace(0.0, 1.0, 41):
        entry = root + path * t
        if anat.lobe_at(entry) == lobe:
            break
    return entry + unit(path) * 3.0


def _segments(branches: list[Branch], lobe: int) -> list[Segment]:
    return [Segment(b.start, b.end, b.radius, b.radius, False, lobe, b.generation) for b in branches]


def _beside(direction: np.ndarray, distance: float) -> np.ndarray:
    """An offset of ``distance`` mm across ``direction``, on its superior side (on its anterior side when
    ``direction`` is vertical): where the companion artery of a bronchus runs."""
    for reference in (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])):
        across = reference - direction * float(direction @ reference)
        if across @ across > 0.05:
            return unit(across) * distance
    raise AssertionError("unreachable: a direction cannot be parallel to two orthogonal axes")


def _artery_along(
    anat: Anatomy, bronchi: list[Branch], start: np.ndarray, lobe: int, vessel_min: float
) -> list[Segment]:
    """The pulmonary artery of one lobe: beside every bronchus of its tree (from ``start``, the end of the lobar
    artery's stem), then on past each terminal bronchus as a space-filling tree of the region it supplies, dividing
    down to ``vessel_min`` mm."""
    inside = _inside(anat, lobe)
    ends: list[np.ndarray] = []
    out: list[Segment] = []
    for b in bronchi:
        begin = start if b.parent < 0 else ends[b.parent]
        axis = np.subtract(b.end, b.start)
        r = ARTERY_TO_BRONCHUS * b.radius
        end = np.asarray(b.end) + _beside(unit(axis), b.radius + airway_wall(b.radius) + r + 0.3)
        if not inside(end):
            end = np.asarray(b.end)
        ends.append(end)
        out.append(Segment(tuple(begin), tuple(end), r, r, False, lobe, b.generation))
        if b.region is not None and r > vessel_min:
            beyond = grow_tree(b.region, end, r, b.generation + 1, inside, min_radius=vessel_min)
            out += _segments(beyond, lobe)
    return out


def airway_wall(radius: float) -> float:
    """Airway wall thickness (mm) for a lumen radius: a fifth of the lumen diameter, at least 0.8 mm so that the
    walls of small bronchi stay visible at 1.25 mm, as they do (partial-volumed) on real CT."""
    return max(0.8, 0.4 * radius)


def build_trees(anat: Anatomy, drawn_radius: float = 0.0) -> Trees:
    """Draw the airway tree, pulmonary arteries and veins, great vessels and oesophagus of one subject.

    The central parts (trachea, main and intermediate bronchi, pulmonary trunk and hilar arteries, venous
    confluences) follow fixed landmarks; inside each lobe the airway and the veins are space-filling trees
    (:func:`~.space_filling.grow_tree`) of the lobe's volume, and the arteries run beside the bronchi and on
    past them to the periphery. Nothing is random: the subject's shape decides every branch.

    Args:
        anat: the subject.
        drawn_radius: the thinnest peripheral tube the caller will draw (mm). Vessels stop dividing there instead
            of at :data:`VESSEL_MIN_RADIUS` when that is larger: a branch's daughters are never wider than it, so
            every tube that will be drawn is the same, and a coarse grid skips growing the thousands it would not
            draw. Airways always grow in full (the arteries follow them).
    """
    a, cx = anat.cav_a, anat.cx
    sx, sy = anat.spine_centre()
    zc = anat.z_carina
    points = lobe_points(anat)
    vessel_min = max(VESSEL_MIN_RADIUS, drawn_radius)
    centroid = {lobe: p.mean(axis=0) for lobe, p in points.items()}
    rt = anat.trachea_radius
    ty = sy + 38.0 + rt  # trachea lies just in front of the oesophagus, which lies in front of the spine
    P = np.array  # short alias for points

    # --- airway: trachea → main bronchi → lobar stems (central) → a space-filling tree in each lobe
    carina = P([cx, ty, zc])
    airway = [Segment((cx, ty, 170.0), tuple(carina), rt, rt, True)]
    right_main = P([cx + 0.2 * a, ty - 3, zc - 16])  # right main bronchus: short and steep
    left_main = P([cx - 0.3 * a, ty - 6, zc - 28])  # left main bronchus: longer, more horizontal
    intermedius = P([cx + 0.26 * a, ty - 2, zc - 38])
    airway += [
        Segment(tuple(carina), tuple(right_main), 0.75 * rt, 0.7 * rt, True, 0, 1),
        Segment(tuple(carina), tuple(left_main), 0.68 * rt, 0.64 * rt, True, 0, 1),
        Segment(tuple(right_main), tuple(intermedius), 0.62 * rt, 0.58 * rt, True, 0, 1),
    ]
    bronchi: dict[int, list[Branch]] = {}
    for lobe, root, scale in (
        (3, right_main, 0.5),
        (4, intermedius, 0.36),
        (5, intermedius, 0.5),
        (1, left_main, 0.5),
        (2, left_main, 0.5),
    ):
        entry = _stem(anat, root, lobe, centroid[lobe])
        airway.append(Segment(tuple(root), tuple(entry), scale * rt, scale * rt, True, 0, 2))
        bronchi[lobe] = grow_tree(points[lobe], entry, scale * rt, 2, _inside(anat, lobe), min_radius=AIRWAY_MIN_RADIUS)
        airway += _segments(bronchi[lobe], lobe)

    # --- pulmonary arteries: trunk from the right ventricle, bifurcation under the arch, hilar branches, then
    # beside the bronchi of each lobe
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
    for lobe, hilum in ((3, right_hilum), (4, right_hilum), (5, right_hilum), (1, left_hilum), (2, left_hilum)):
        root = bronchi[lobe][0]
        r = ARTERY_TO_BRONCHUS * root.radius
        start = np.asarray(root.start) + _beside(unit(np.subtract(root.end, root.start)), 2 * r + 1.0)
        if anat.lobe_at(start) != lobe:
            start = np.asarray(root.start)
        artery.append(Segment(tuple(hilum), tuple(start), r, r, True, 0, 2))
        artery += _artery_along(anat, bronchi[lobe], start, lobe, vessel_min)

    # --- pulmonary veins: from the left atrium (back of the heart) to the lower hilum of each lobe, then a
    # space-filling tree of their own that runs between the bronchovascular bundles
    atrium = P([hx + 0.25 * anat.heart_rx, hy - 0.55 * anat.heart_ry, hz + 0.3 * anat.heart_rz])
    vein: list[Segment] = []
    for side, lobes in ((1, (3, 4, 5)), (-1, (1, 2))):
        for lobe in lobes:
            root = P([cx + side * 0.22 * a, atrium[1] - 4, (atrium[2] + centroid[lobe][2]) / 2])
            entry = _stem(anat, root, lobe, centroid[lobe])
            vein += [
                Segment(tuple(atrium), tuple(root), 7.0, 6.5, True),
                Segment(tuple(root), tuple(entry), 5.5, 5.0, True),
            ]
            tree = grow_tree(points[lobe], entry, 5.0, 2, _inside(anat, lobe), min_radius=vessel_min)
            vein += _segments(tree, lobe)

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
    great = [Segment(tuple(p), tuple(q), r, s, True) for p, q, r, s in zip(path, path[1:], radii, radii[1:])]
    # arch branches up to the neck: brachiocephalic trunk (right), left common carotid, left subclavian
    top = 170.0
    for at, to, r in ((0.35, (cx + 14, ty + 20), 6.5), (0.6, (cx - 10, ty + 12), 4.0), (0.85, (cx - 22, ty), 5.0)):
        start = path[1] + (path[3] - path[1]) * at
        great.append(Segment(tuple(start), (to[0], to[1], top), r, r * 0.9, True))
    # superior vena cava: down the right of the ascending aorta into the right atrium
    right_atrium = P([hx + 0.8 * anat.heart_half_width(), hy - 0.1 * anat.heart_ry, hz + 0.4 * anat.heart_rz])
    great.append(Segment((cx + 30, ty + 22, top), (cx + 30, ty + 22, zc - 10), 9.0, 9.5, True))
    great.append(Segment((cx + 30, ty + 22, zc - 10), tuple(right_atrium), 9.5, 10.0, True))
    oesophagus = [Segment((sx - 4, sy + 27, top), (sx - 8, sy + 30, anat.z_dia_left - 25), 8.0, 8.0, True)]
    return Trees(airway=airway, artery=artery, vein=vein, great_vessels=great, oesophagus=oesophagus)
