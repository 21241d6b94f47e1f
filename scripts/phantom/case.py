"""One phantom case: generate it from (size, seed, findings) and measure its ground truth on the voxel arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..data.io import ras_affine
from .anatomy import Anatomy
from .build import RESOLVED_FRACTION, Volumes, build_volumes, finalise_airway
from .findings import Finding, FindingSpec
from .geometry import FOV_MM, Grid, check_size, smooth_noise
from .lesions import apply_findings
from .reports import write_report
from .tissues import HU_MEAN, HU_SD, LUNG_TISSUES, Tissue, lut
from .trees import build_trees

VERSION = "2.0"  # 2.0: space-filling trees, tapered rib cage, curved ribs, turned heart, varied reports
GENERATOR = f"scripts.phantom {VERSION}"
LAA_THRESHOLD_HU = -950
# tissues inside the inner thoracic wall: the thoracic width of the cardiothoracic ratio is their left-right extent
THORACIC_CAVITY = lut(
    *LUNG_TISSUES,
    Tissue.EFFUSION,
    Tissue.AIRWAY_LUMEN,
    Tissue.MEDIASTINUM,
    Tissue.HEART,
    Tissue.PERICARDIAL_FAT,
    Tissue.BLOOD,
)
_VESSEL_TISSUE = lut(Tissue.PULM_VESSEL, Tissue.CONSOLIDATION)


@dataclass
class PhantomCase:
    """A generated case. Arrays are indexed (x, y, z) in RAS (x → patient's right, y → anterior, z → superior).

    Args:
        ct_hu: CT in HU (int16).
        lobe: lobe labels 0..5 (uint8; 1 left upper, 2 left lower, 3 right upper, 4 right middle, 5 right lower).
        airway, vessel: binary masks (uint8 0/1).
        tissue: tissue label map (uint8, :class:`~scripts.phantom.tissues.Tissue`), e.g. for the heart and fluid.
        spacing: isotropic voxel size in mm (``FOV_MM / size``); affine: 4×4 RAS voxel-to-world matrix.
        report: the radiology report; truth: generating parameters and measured ground truth (truth.json).
        findings: the resolved findings.
    """

    ct_hu: np.ndarray
    lobe: np.ndarray
    airway: np.ndarray
    vessel: np.ndarray
    tissue: np.ndarray
    spacing: float
    affine: np.ndarray
    report: str
    truth: dict[str, Any]
    findings: list[Finding]
    anatomy: Anatomy


def _as_spec(findings: FindingSpec | str | None) -> FindingSpec:
    if findings is None:
        return FindingSpec(random=True)
    if isinstance(findings, str):
        return FindingSpec.parse(findings)
    if isinstance(findings, FindingSpec):
        return findings
    raise ValueError(
        f"findings must be a FindingSpec, a string such as 'effusion:right:large' or None, "
        f"got {type(findings).__name__}"
    )


def render_ct(v: Volumes, rng: np.random.Generator) -> np.ndarray:
    """CT (int16 HU) of a tissue map: per-tissue mean and noise, lung texture and the supine density gradient."""
    grid, anat = v.grid, v.anatomy
    tissue = v.tissue
    ct = HU_MEAN[tissue]
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    noise *= HU_SD[tissue]
    ct += noise
    del noise  # 64 MB at 256³
    lung = tissue == Tissue.LUNG
    objects = ndimage.find_objects(lung.astype(np.uint8))
    if objects:
        box = objects[0]
        sub = ct[box]
        texture = 14.0 * smooth_noise(sub.shape, grid.spacing, 5.0, rng)
        y = grid.axis(box[1].start, box[1].stop)[None, :, None]
        # supine: the dependent (posterior) lung is denser by some 40 HU at the back
        texture += 40.0 * np.clip(-(y - anat.cy) / anat.cav_b, 0.0, 1.0)
        sub += np.where(lung[box], texture, 0.0).astype(np.float32)
    np.rint(ct, out=ct)
    np.clip(ct, -1024, 3071, out=ct)
    return ct.astype(np.int16)


def _extent_mm(mask_1d: np.ndarray, spacing: float) -> float:
    idx = np.flatnonzero(mask_1d)
    return float((idx[-1] - idx[0] + 1) * spacing) if len(idx) else 0.0


def cardiothoracic_ratio(tissue: np.ndarray, spacing: float) -> tuple[float, float, float, int]:
    """(CTR, heart width mm, thoracic width mm, axial slice index) measured on a tissue map.

    Heart width: the largest left-right (x) extent, ``(last − first + 1) × spacing``, of HEART voxels on any axial
    slice (first such slice from inferior). Thoracic width: the left-right extent of the thoracic-cavity tissues
    (:data:`THORACIC_CAVITY`: lung, pleural fluid, airway, mediastinum, heart, vessels — everything inside the
    inner chest wall) on that same slice.
    """
    heart = (tissue == Tissue.HEART).any(axis=1)  # (x, z)
    if not heart.any():
        return 0.0, 0.0, 0.0, -1
    cols = np.nonzero(heart.any(axis=0))[0]
    widths = np.zeros(tissue.shape[2])
    for k in cols:
        widths[k] = _extent_mm(heart[:, k], spacing)
    k = int(np.argmax(widths))
    thorax = THORACIC_CAVITY[tissue[:, :, k]].any(axis=1)
    thorax_width = _extent_mm(thorax, spacing)
    return widths[k] / thorax_width, float(widths[k]), thorax_width, k


def measure_truth(
    case_ct: np.ndarray,
    lobe: np.ndarray,
    airway: np.ndarray,
    vessel: np.ndarray,
    tissue: np.ndarray,
    grid: Grid,
    cx: float,
) -> dict[str, Any]:
    """Measured ground truth of a case, from the arrays that are written to disk."""
    voxel_ml = grid.spacing**3 / 1000.0
    right = slice(int(np.searchsorted(grid.axis(), cx, side="right")), None)
    left = slice(0, right.start)
    effusion = tissue == Tissue.EFFUSION
    ctr, heart_w, thorax_w, ctr_slice = cardiothoracic_ratio(tissue, grid.spacing)
    lungs = lobe > 0
    lobe_counts = np.bincount(lobe.ravel(), minlength=6)
    laa = float((case_ct[lungs] < LAA_THRESHOLD_HU).mean() * 100.0) if lungs.any() else 0.0
    left_ml = float((lobe_counts[1] + lobe_counts[2]) * voxel_ml)
    right_ml = float((lobe_counts[3] + lobe_counts[4] + lobe_counts[5]) * voxel_ml)
    consolidation = tissue == Tissue.CONSOLIDATION
    return {
        "effusion_ml": {
            "left": round(float(effusion[left].sum() * voxel_ml), 2),
            "right": round(float(effusion[right].sum() * voxel_ml), 2),
        },
        "cardiothoracic_ratio": round(float(ctr), 4),
        "heart_width_mm": round(heart_w, 2),
        "thorax_width_mm": round(thorax_w, 2),
        "cardiothoracic_slice_index": ctr_slice,
        "laa950_percent": round(laa, 3),
        "lung_volume_ml": {
            "left": round(left_ml, 2),
            "right": round(right_ml, 2),
            "total": round(left_ml + right_ml, 2),
        },
        "lobe_volume_ml": {str(i): round(float(lobe_counts[i] * voxel_ml), 2) for i in range(1, 6)},
        "airway_volume_mm3": round(float(airway.sum() * grid.spacing**3), 1),
        "vessel_volume_ml": round(float(vessel.sum() * voxel_ml), 2),
        "consolidation_ml": {
            "left": round(float(consolidation[left].sum() * voxel_ml), 2),
            "right": round(float(consolidation[right].sum() * voxel_ml), 2),
        },
    }


def generate_case(
    size: int, seed: int, findings: FindingSpec | str | None = None, case_id: str = "case"
) -> PhantomCase:
    """Generate one phantom case.

    Args:
        size: edge length in voxels (multiple of 8, 32..512); spacing is ``FOV_MM / size`` mm, isotropic.
        seed: non-negative integer; the same (size, seed, findings) always gives identical arrays and report.
        findings: a :class:`FindingSpec`, a spec string (``"effusion:right:large,cardiomegaly"``, ``"normal"``)
            or None for the random default mix (``findings.py``).
        case_id: written into the truth as ``id``.
    """
    size = check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    spec = _as_spec(findings)
    grid = Grid(size)
    # independent streams: the body does not change when only the findings or the noise change (the third drew
    # the trees before they became space-filling, hence deterministic; kept so the others stay as they were)
    s_find, s_anat, _, s_lesion, s_noise, s_report = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(6)
    )
    resolved = spec.resolve(s_find)
    ctr = next((f.parameters["target_ctr"] for f in resolved if f.type == "cardiomegaly"), None)
    anat = Anatomy.sample(s_anat, ctr=ctr)
    trees = build_trees(anat, drawn_radius=RESOLVED_FRACTION * grid.spacing)
    v = build_volumes(anat, trees, grid)
    apply_findings(v, resolved, s_lesion)
    airway = finalise_airway(v)
    lobe = v.lobe()
    vessel = (v.vessel & _VESSEL_TISSUE[v.tissue] & ~airway).astype(np.uint8)
    ct = render_ct(v, s_noise)
    measured = measure_truth(ct, lobe, airway, vessel, v.tissue, grid, anat.cx)
    truth: dict[str, Any] = {
        "id": case_id,
        "seed": int(seed),
        "size": size,
        "spacing_mm": [grid.spacing] * 3,
        "fov_mm": FOV_MM,
        "findings": [f.to_dict() for f in resolved],
        "findings_request": spec.describe(),
        **measured,
        "anatomy": anat.to_dict(),
        "tree_segments": trees.counts(),
        "synthetic": True,
        "generator": GENERATOR,
    }
    report = write_report(resolved, truth, s_report)
    return PhantomCase(
        ct_hu=ct,
        lobe=lobe,
        airway=airway.astype(np.uint8),
        vessel=vessel,
        tissue=v.tissue,
        spacing=grid.spacing,
        affine=ras_affine([grid.spacing] * 3, grid.shape),
        report=report,
        truth=truth,
        findings=resolved,
        anatomy=anat,
    )
