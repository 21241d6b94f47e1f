"""Figure of one phantom case: axial, coronal and sagittal slices in a lung window, plain and with the label maps.

``python -m scripts.phantom.figure --out docs/figures/phantom.png`` (256³, about 5 s). Slices are shown in the
radiological convention: the patient's right on the image left, anterior up in the axial view.
"""

from __future__ import annotations

import argparse
import io
import textwrap
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..conventions import LOBE_LABELS  # noqa: E402
from ..data.io import atomic_path  # noqa: E402
from .case import PhantomCase, generate_case  # noqa: E402

DEFAULT_FINDINGS = "effusion:right:moderate,cardiomegaly:moderate,emphysema:left:moderate,nodule:lul:large"
LUNG_WINDOW = (-1350.0, 150.0)  # width 1500, level -600
_LOBE_COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _views(case: PhantomCase) -> list[tuple[str, tuple[slice | int, ...], bool]]:
    """(title, index, axial?) of the three slices: axial at the cardiothoracic-ratio level, coronal through the
    trachea, sagittal through the right lung."""
    n = case.ct_hu.shape[0]
    anat = case.anatomy
    to_index = lambda mm: int(np.clip(round((mm - case.affine[0, 3]) / case.spacing), 0, n - 1))  # noqa: E731
    k = case.truth["cardiothoracic_slice_index"]
    j = to_index(anat.cy - anat.cav_b + 16.0 + 38.0 + anat.trachea_radius)
    i = to_index(anat.cx + 0.5 * anat.cav_a)
    return [("axial", (slice(None), slice(None), k), True), ("coronal", (slice(None), j, slice(None)), False),
            ("sagittal", (i, slice(None), slice(None)), False)]


def _display(plane: np.ndarray, axial: bool, sagittal: bool) -> np.ndarray:
    """Array (first axis, second axis) → image rows/columns in the radiological convention."""
    image = plane.T[::-1]  # rows: second axis, top = anterior (axial) or superior (coronal, sagittal)
    return image[:, ::-1]  # columns: patient's right (axial, coronal) or anterior (sagittal) on the left


def render(case: PhantomCase, title: str = "") -> plt.Figure:
    """The figure: top row CT only, bottom row CT with lobe (colours), airway (cyan) and vessel (red) overlays."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 9), facecolor="black")
    lobe_cmap = ListedColormap(_LOBE_COLOURS)
    for col, (name, index, axial) in enumerate(_views(case)):
        sagittal = name == "sagittal"
        ct = _display(case.ct_hu[index], axial, sagittal)
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(ct, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, color="white")
                continue
            lobe = _display(case.lobe[index], axial, sagittal).astype(float)
            ax.imshow(np.ma.masked_equal(lobe, 0), cmap=lobe_cmap, vmin=0.5, vmax=5.5, alpha=0.28,
                      interpolation="nearest")
            for mask, colour in ((case.vessel, (1.0, 0.15, 0.15)), (case.airway, (0.1, 0.95, 1.0))):
                m = _display(mask[index], axial, sagittal) > 0
                rgba = np.zeros((*m.shape, 4))
                rgba[m] = (*colour, 0.85)
                ax.imshow(rgba, interpolation="nearest")
    handles = [Patch(color=c, label=LOBE_LABELS[i + 1]) for i, c in enumerate(_LOBE_COLOURS)]
    handles += [Patch(color=(0.1, 0.95, 1.0), label="airway"), Patch(color=(1.0, 0.15, 0.15), label="vessel")]
    fig.legend(handles=handles, loc="lower center", ncol=7, frameon=False, labelcolor="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.phantom.figure", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/phantom.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--findings", default=DEFAULT_FINDINGS)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    case = generate_case(args.size, args.seed, args.findings)
    impression = case.report.splitlines()[-1]
    t = case.truth
    title = (f"phantom {args.size}³, seed {args.seed}, {case.spacing:g} mm — {textwrap.shorten(impression, 110)}\n"
             f"effusion L/R {t['effusion_ml']['left']:.0f}/{t['effusion_ml']['right']:.0f} mL, "
             f"CTR {t['cardiothoracic_ratio']:.2f}, %LAA-950 {t['laa950_percent']:.1f}, "
             f"airway {t['airway_volume_mm3'] / 1000:.1f} mL, lungs {t['lung_volume_ml']['total'] / 1000:.2f} L")
    fig = render(case, title)
    buffer = io.BytesIO()
    # no metadata: the same arguments give the same bytes
    fig.savefig(buffer, format="png", dpi=80, facecolor="black", metadata={"Software": None})
    plt.close(fig)
    out = Path(args.out)
    try:
        with atomic_path(out, overwrite=args.overwrite) as tmp:
            tmp.write_bytes(buffer.getvalue())
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.chmod(out, 0o644)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
