"""Paint one subject's normal anatomy into a tissue label map on a voxel grid.

The painter works from outside in: body wall layers, ribs and the thoracic cavity (slice by slice: the rib cage
narrows towards the apex), the abdomen under the diaphragm, bones, lungs with their lobes and fissures, heart, then tubes (great
vessels, pulmonary vessels, airways). Findings (``findings.py``) are painted on the result afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy
from .geometry import Grid, largest_component, tubes_voxels
from .tissues import LUNG_TISSUES, Tissue, lut
from .trees import Segment, Trees, airway_wall

_LUNGISH = lut(Tissue.LUNG, Tissue.FISSURE)
_NOT_BONE = ~lut(Tissue.BONE, Tissue.MARROW, Tissue.DISC, Tissue.CORD)
_CENTRAL_VESSEL_OK = ~lut(
    Tissue.BONE,
    Tissue.MARROW,
    Tissue.DISC,
    Tissue.CORD,
    Tissue.HEART,
    Tissue.BLOOD,
    Tissue.AIRWAY_LUMEN,
    Tissue.AIRWAY_WALL,
)
_PERIPHERAL_OK = lut(Tissue.LUNG, Tissue.FISSURE, Tissue.PULM_VESSEL)
_LUNG_LUT = lut(*LUNG_TISSUES)
# peripheral tubes thinner than this fraction of a voxel are not drawn: on a coarse grid they would be widened to
# a voxel and fill the lung (a 64³ airway tree of 220 mL instead of ~60), where real CT shows them not at all
RESOLVED_FRACTION = 0.3


@dataclass
class Volumes:
    """Mutable state of a phantom while it is painted (arrays indexed (x, y, z)).

    Args:
        tissue: tissue label map (uint8, :class:`Tissue`).
        lobe_region: analytic lobe of every voxel (0..5), before anything is carved out of the lungs.
        vessel: voxels drawn by a pulmonary artery or vein (the vessel label is this ∩ vessel-like tissue).
        airway: voxels drawn as airway lumen.
    """

    grid: Grid
    anatomy: Anatomy
    tissue: np.ndarray
    lobe_region: np.ndarray
    vessel: np.ndarray
    airway: np.ndarray

    def lobe(self) -> np.ndarray:
        """Lobe label map: the analytic lobes where the tissue is lung (airway lumen and pleural fluid excluded)."""
        return np.where(_LUNG_LUT[self.tissue], self.lobe_region, 0).astype(np.uint8)


def _section(anat: Anatomy, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
    """Axial cross-section of the body at height ``z``: fat, muscle, the intercostal layer with its ribs, and
    the cavity (mediastinum, for now). ``x`` is (n, 1), ``y`` (1, n); the cavity and its wall taper to the apex."""
    section = np.full((x.shape[0], y.shape[1]), Tissue.AIR, dtype=np.uint8)
    pleura = 1.0
    section[anat.layer_q(x, y, pleura + anat.rib + anat.muscle + anat.fat, z) <= 1] = Tissue.FAT
    section[anat.layer_q(x, y, pleura + anat.rib + anat.muscle, z) <= 1] = Tissue.MUSCLE
    # paraspinal muscles bulge the back wall
    sx, sy = anat.spine_centre()
    for side in (-1, 1):
        para = ((x - sx - side * 27) / 22) ** 2 + ((y - sy + 42) / 24) ** 2 <= 1
        section[para & (section != Tissue.AIR)] = Tissue.MUSCLE
    _ribs(anat, section, x, y, z)
    section[anat.cavity_q(x, y, z) <= 1] = Tissue.MEDIASTINUM
    return section


def _abdomen(v: Volumes, x: np.ndarray, y: np.ndarray, z: np.ndarray, cavity: np.ndarray) -> None:
    """Diaphragm (5 mm of muscle) and, below it, liver on the right and other abdominal soft tissue."""
    anat = v.anatomy
    zd = anat.diaphragm_z(x, y)  # (n, n, 1)
    liver = (x - anat.cx) > -30 + 0.25 * (y - anat.cy)
    below = cavity & (z < zd)
    v.tissue[below] = Tissue.MUSCLE
    deep = cavity & (z < zd - 5.0)
    organ = np.where(liver, Tissue.LIVER, Tissue.ABDOMEN).astype(np.uint8)  # (n, n, 1): one byte per voxel below
    np.copyto(v.tissue, np.broadcast_to(organ, v.tissue.shape), where=deep)


def _ribs(anat: Anatomy, section: np.ndarray, x: np.ndarray, y: np.ndarray, z: float) -> None:
    """Ribs in the intercostal layer of one axial section, costal cartilage and sternum in front.

    A rib leaves the spine about level, then curves down around the chest to its cartilage in front, ~0.9 of
    the cavity's depth lower (the curve of a rib seen from the side); a section cuts each rib in short arcs.
    """
    if not anat.z_dia_left - anat.dome_drop - 25.0 < z < anat.z_apex + 10.0:
        return
    ring = (anat.layer_q(x, y, 1.0 + anat.rib, z) <= 1) & (anat.cavity_q(x, y, z) > 1)
    if not ring.any():
        return
    ix, iy = np.nonzero(ring)
    xv, yv = x[ix, 0], y[0, iy]
    around = np.arctan2(np.abs(xv - anat.cx), anat.cy - yv) / np.pi  # 0 at the spine, 1 at the sternum
    phase = (z + 0.9 * anat.cav_b * around**1.6 - anat.rib_phase) % anat.rib_pitch
    rib = phase < 10.0
    cortex = rib & ((phase < 2.0) | (phase > 8.0))
    front = (np.abs(xv - anat.cx) < 45.0) & (yv > anat.cy)
    sternum = (np.abs(xv - anat.cx) < 16.0) & (yv > anat.cy) & (anat.z_dia_right - 15.0 < z < anat.z_apex - 25.0)
    labels = np.where(cortex, Tissue.BONE, np.where(rib, Tissue.MARROW, Tissue.MUSCLE)).astype(np.uint8)
    labels = np.where(front & rib, Tissue.CARTILAGE, labels)
    labels = np.where(sternum, np.where(phase < 3.0, Tissue.BONE, Tissue.MARROW), labels)
    section[ix, iy] = labels


def _spine(v: Volumes, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Vertebral bodies with discs, spinal canal with cord, laminae, transverse and spinous processes."""
    anat = v.anatomy
    sx, sy = anat.spine_centre()
    r_body = np.sqrt((x - sx) ** 2 + (y - sy) ** 2)
    cy_canal = sy - 26.0
    r_canal = np.sqrt((x - sx) ** 2 + (y - cy_canal) ** 2)
    posterior = (r_canal <= 13.0) & (r_canal > 8.0)
    posterior |= (np.abs(x - sx) < 4.0) & (y < cy_canal - 8.0) & (y > cy_canal - 40.0)
    posterior |= (np.abs(y - cy_canal - 4.0) < 5.0) & (np.abs(x - sx) < 36.0) & (np.abs(x - sx) > 8.0)
    zz = z.reshape(-1)
    disc = ((zz - anat.rib_phase) % 27.0) < 5.0
    ix, iy = np.nonzero(r_body <= 17.0)
    cortex = (r_body[ix, iy] > 14.5)[:, None]
    v.tissue[ix, iy, :] = np.where(disc[None, :], Tissue.DISC, np.where(cortex, Tissue.BONE, Tissue.MARROW))
    px, py = np.nonzero(posterior)
    v.tissue[px, py, :] = Tissue.BONE
    px, py = np.nonzero(r_canal <= 8.0)
    v.tissue[px, py, :] = Tissue.CORD


def _lungs(v: Volumes) -> None:
    """Lung parenchyma with lobes and fissures."""
    anat = v.anatomy
    box = v.grid.index_box(*anat.lung_bounds())
    if box is None:
        return
    x, y, z = v.grid.box_coords(box)
    inside = anat.lung_region(x, y, z)
    lobe = anat.lobe_of(x, y, z, inside=inside)
    v.lobe_region[box] = lobe
    sub = v.tissue[box]
    sub[inside] = Tissue.LUNG
    half = 0.7  # a fissure is a ~1.4 mm sheet: one voxel at 1.25 mm, a broken line at coarser spacings
    sub[anat.fissures(x, y, z, lobe, half)] = Tissue.FISSURE


def _heart(v: Volumes) -> None:
    """Heart ellipsoid on the diaphragm, wrapped in pericardial fat."""
    anat, grid = v.anatomy, v.grid
    r = max(anat.heart_rx, anat.heart_ry)
    reach = np.array([r, r, anat.heart_rz]) + 4.0
    centre = np.array([anat.heart_x, anat.heart_y, anat.heart_z])
    box = grid.index_box(centre - reach, centre + reach)
    if box is None:
        return
    x, y, z = grid.box_coords(box)
    above = z > anat.diaphragm_z(x, y) - 2.0
    sub = v.tissue[box]
    fat = (anat.heart_q(x, y, z, grow=2.5) <= 1) & above & ~_LUNGISH[sub] & _NOT_BONE[sub]
    sub[fat] = Tissue.PERICARDIAL_FAT
    sub[(anat.heart_q(x, y, z) <= 1) & above & _NOT_BONE[sub]] = Tissue.HEART


def paint_tubes(
    v: Volumes, segs: list[Segment], label: Tissue, allowed: np.ndarray, min_radius: float = 0.0, grow: float = 0.0
) -> np.ndarray:
    """Paint ``label`` where the tubes cover tissue that ``allowed`` (a tissue LUT) permits; returns the flat
    (C-order) indices painted.

    All tubes are painted at once (:func:`tubes_voxels`). With one label that is the same as one tube after the
    other: a voxel ends up painted when any tube covers it on tissue that was allowed before, whatever the order.
    Where two labels must follow each other (an airway's wall, then its lumen), call once per label.
    """
    if not segs:
        return np.zeros(0, dtype=np.int64)
    ends = np.array([(*s.p0, *s.p1, s.r0, s.r1) for s in segs], dtype=np.float64)
    painted = []
    for _, idx in tubes_voxels(v.grid, ends, min_radius, grow):
        idx = idx[allowed[np.take(v.tissue, idx)]]  # np.take / np.put work on flat indices, in place
        np.put(v.tissue, idx, label)
        painted.append(idx)
    return np.concatenate(painted) if painted else np.zeros(0, dtype=np.int64)


def _resolved(segs: list[Segment], spacing: float) -> list[Segment]:
    """The tubes a grid of this spacing shows: central ones and peripheral ones not thinner than
    :data:`RESOLVED_FRACTION` of a voxel."""
    return [s for s in segs if s.central or max(s.r0, s.r1) >= RESOLVED_FRACTION * spacing]


def _airway(v: Volumes, segs: list[Segment]) -> None:
    """Airway lumen (air) with a wall of soft tissue; central airways lie in the mediastinum, the rest in lung."""
    # tubes thinner than about a voxel would fall between voxel centres and break the tree apart at coarse sizes
    min_r = 0.6 * v.grid.spacing
    for seg in _resolved(segs, v.grid.spacing):
        wall = airway_wall(max(seg.r0, seg.r1))
        outer = Segment(seg.p0, seg.p1, max(seg.r0, min_r) + wall, max(seg.r1, min_r) + wall, seg.central)
        allowed = _NOT_BONE & ~lut(Tissue.AIRWAY_LUMEN) if seg.central else _PERIPHERAL_OK
        paint_tubes(v, [outer], Tissue.AIRWAY_WALL, allowed)
        lumen = paint_tubes(
            v, [seg], Tissue.AIRWAY_LUMEN, lut(Tissue.AIRWAY_WALL, Tissue.AIRWAY_LUMEN) | allowed, min_r
        )
        np.put(v.airway, lumen, True)


def _vessels(v: Volumes, segs: list[Segment]) -> None:
    """Pulmonary arteries and veins: blood-density tubes, the vessel label where they are drawn."""
    min_r = 0.5 * v.grid.spacing
    segs = _resolved(segs, v.grid.spacing)
    for central, allowed in ((True, _CENTRAL_VESSEL_OK), (False, _PERIPHERAL_OK)):
        drawn = paint_tubes(v, [s for s in segs if s.central == central], Tissue.PULM_VESSEL, allowed, min_r)
        np.put(v.vessel, drawn, True)


def build_volumes(anat: Anatomy, trees: Trees, grid: Grid) -> Volumes:
    """Paint a normal subject on ``grid``."""
    x, y, z = grid.coords()
    x2, y2 = x[:, :, 0], y[:, :, 0]
    tissue = np.empty(grid.shape, dtype=np.uint8)
    for k, zk in enumerate(z.ravel()):
        tissue[:, :, k] = _section(anat, x2, y2, float(zk))
    v = Volumes(
        grid, anat, tissue, np.zeros(grid.shape, np.uint8), np.zeros(grid.shape, bool), np.zeros(grid.shape, bool)
    )
    _abdomen(v, x, y, z, tissue == Tissue.MEDIASTINUM)
    _lungs(v)
    _spine(v, x2, y2, z)
    _heart(v)
    # the lung within a few mm of a central tube becomes mediastinum: the tube lies outside the lung
    central = [s for s in trees.airway + trees.artery + trees.vein if s.central]
    paint_tubes(v, central, Tissue.MEDIASTINUM, _LUNGISH, grow=2.5)
    paint_tubes(v, trees.great_vessels + trees.oesophagus, Tissue.MEDIASTINUM, _LUNGISH, grow=3.0)
    paint_tubes(v, trees.great_vessels, Tissue.BLOOD, _CENTRAL_VESSEL_OK)
    paint_tubes(v, trees.oesophagus, Tissue.MUSCLE, _CENTRAL_VESSEL_OK)
    _vessels(v, trees.artery + trees.vein)
    _airway(v, trees.airway)
    return v


def finalise_airway(v: Volumes) -> np.ndarray:
    """Airway label: drawn lumen still air, largest 26-connected component; stray lumen bits become lung."""
    lumen = v.airway & (v.tissue == Tissue.AIRWAY_LUMEN)
    keep = largest_component(lumen)
    stray = lumen & ~keep
    v.tissue[stray & (v.lobe_region > 0)] = Tissue.LUNG
    v.tissue[stray & (v.lobe_region == 0)] = Tissue.MEDIASTINUM
    return keep
