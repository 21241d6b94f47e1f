"""Pictures of volumes: three orthogonal slices in a lung window with the anatomy maps as coloured overlays.

Used for inference previews (``<id>.png``), training sample previews (PNG + TensorBoard) and the docs figures,
so every picture of the bundle looks the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from scripts.conventions import LOBE_LABELS, RIGHT_LUNG, lung_sides  # noqa: E402
from scripts.data.io import atomic_path  # noqa: E402

LUNG_WINDOW = (-1350.0, 150.0)  # HU shown from black to white (level -600, width 1500)
# one RGBA colour per label map value; lobes use five distinct hues
_LOBE_COLOURS = np.array(
    [
        [0, 0, 0, 0],
        [0.12, 0.47, 0.71, 0.35],
        [0.17, 0.63, 0.17, 0.35],
        [1.0, 0.5, 0.05, 0.35],
        [0.58, 0.40, 0.74, 0.35],
        [0.84, 0.15, 0.16, 0.35],
    ]
)
_MASK_COLOURS = {"airway": (0.0, 1.0, 1.0, 0.8), "vessel": (1.0, 0.1, 0.1, 0.7)}


def _slices(volume: np.ndarray, index: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of an (x, y, z) RAS array, oriented as radiologists view them:
    axial with the patient's right on the image left and anterior up; coronal and sagittal with superior up."""
    x, y, z = index
    axial = volume[:, :, z].T[::-1, ::-1]  # rows: anterior→posterior, cols: patient right→left
    coronal = volume[:, y, :].T[::-1, ::-1]  # rows: superior→inferior, cols: right→left
    sagittal = volume[x, :, :].T[::-1, :]  # rows: superior→inferior, cols: posterior→anterior
    return [axial, coronal, sagittal]


def default_index(shape: tuple[int, int, int], lobe: np.ndarray | None = None) -> tuple[int, int, int]:
    """Slice indices (x, y, z) shown by default: the centre of the volume, but with the sagittal slice through the
    right lung's centre when a lobe map has one (labels 3-5): the midline sagittal shows spine and mediastinum
    only, while the right lung's shows its three lobes and both fissures."""
    index = [s // 2 for s in shape]
    if lobe is not None:
        per_x = (lung_sides(np.asarray(lobe)) == RIGHT_LUNG).sum(axis=(1, 2))
        if per_x.any():
            index[0] = int(round(float(np.average(np.arange(per_x.size), weights=per_x))))
    return index[0], index[1], index[2]


def montage(
    ct_hu: np.ndarray,
    masks: Mapping[str, np.ndarray] | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    index: tuple[int, int, int] | None = None,
    title: str = "",
) -> plt.Figure:
    """A figure of 2 rows × 3 columns: the CT slices, and the same slices with ``lobe``/``airway``/``vessel`` overlays.

    Args:
        ct_hu: (X, Y, Z) CT in HU, RAS.
        masks: optional label maps of the same shape, keyed ``lobe`` (0..5), ``airway``, ``vessel`` (0/1).
        spacing: voxel size in mm, for correct aspect ratios.
        index: slice indices (x, y, z); default :func:`default_index` (the centre, sagittal through the right lung).
        title: figure title (e.g. the prompt, shortened).
    """
    ct_hu = np.asarray(ct_hu, dtype=np.float32)
    if ct_hu.ndim != 3:
        raise ValueError(f"montage takes a 3D (x, y, z) volume, got shape {ct_hu.shape}")
    masks = dict(masks or {})
    for name, mask in masks.items():
        if np.shape(mask) != ct_hu.shape:
            raise ValueError(f"mask {name!r} has shape {np.shape(mask)}, the CT {ct_hu.shape}")
    index = index or default_index(ct_hu.shape, masks.get("lobe"))
    sx, sy, sz = spacing
    aspects = [sy / sx, sz / sx, sz / sy]
    rows = 2 if masks else 1
    fig, axes = plt.subplots(rows, 3, figsize=(10, 3.6 * rows), squeeze=False, facecolor="black")
    ct_slices = _slices(ct_hu, index)
    overlays = []
    if masks:
        rgba = np.zeros((*ct_hu.shape, 4), dtype=np.float32)
        if "lobe" in masks:
            rgba[:] = _LOBE_COLOURS[np.clip(np.asarray(masks["lobe"]).astype(int), 0, 5)]
        for name, colour in _MASK_COLOURS.items():
            if name in masks:
                rgba[np.asarray(masks[name]) > 0] = colour
        overlays = [np.stack([_slices(rgba[..., c], index)[i] for c in range(4)], -1) for i in range(3)]
    for col, (label, ct_slice, aspect) in enumerate(zip(("axial", "coronal", "sagittal"), ct_slices, aspects)):
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(ct_slice, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=aspect)
            if row == 1:
                ax.imshow(overlays[col], aspect=aspect)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(label, color="white", fontsize=10)
    if masks:
        handles = []
        if "lobe" in masks:
            handles += [Patch(color=_LOBE_COLOURS[i, :3], label=name) for i, name in LOBE_LABELS.items()]
        handles += [Patch(color=_MASK_COLOURS[name][:3], label=name) for name in _MASK_COLOURS if name in masks]
        fig.legend(
            handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white", fontsize=8
        )
    if title:
        lines = [line if len(line) < 130 else line[:127] + "..." for line in title.splitlines()[:2]]
        fig.suptitle("\n".join(lines), color="white", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if masks else 0, 1, 0.95 if title else 1))
    return fig


def save_montage(path: str | os.PathLike, ct_hu: np.ndarray, overwrite: bool = False, **kwargs) -> None:
    """Render :func:`montage` to a PNG file atomically (keyword arguments as for :func:`montage`)."""
    fig = montage(ct_hu, **kwargs)
    try:
        with atomic_path(path, overwrite) as tmp:
            # no metadata: the same volume gives the same bytes
            fig.savefig(tmp, format="png", dpi=100, facecolor=fig.get_facecolor(), metadata={"Software": None})
    finally:
        plt.close(fig)


def montage_array(ct_hu: np.ndarray, **kwargs) -> np.ndarray:
    """:func:`montage` as an (H, W, 3) uint8 RGB array, e.g. for TensorBoard."""
    fig = montage(ct_hu, **kwargs)
    try:
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
