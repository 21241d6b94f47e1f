"""Figure of one phantom case: axial, coronal and sagittal slices in a lung window, plain and with the label maps.

``python -m scripts.phantom.figure --out docs/figures/phantom.png`` (256³, about 5 s). Slices are shown in the
radiological convention: the patient's right on the image left, anterior up in the axial view.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np

from ..cli import ArgumentParser, run_main
from ..visualization import save_montage
from .case import PhantomCase, generate_case

DEFAULT_FINDINGS = "effusion:right:moderate,cardiomegaly:moderate,emphysema:left:moderate,nodule:lul:large"


def slice_index(case: PhantomCase) -> tuple[int, int, int]:
    """(x, y, z) of the three slices: sagittal through the right lung, coronal through the trachea, axial at the
    cardiothoracic-ratio level."""
    n = case.ct_hu.shape[0]
    anat = case.anatomy
    to_index = lambda mm: int(np.clip(round((mm - case.affine[0, 3]) / case.spacing), 0, n - 1))  # noqa: E731
    k = case.truth["cardiothoracic_slice_index"]
    j = to_index(anat.cy - anat.cav_b + 16.0 + 38.0 + anat.trachea_radius)
    i = to_index(anat.cx + 0.5 * anat.cav_a)
    return i, j, k


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m scripts.phantom.figure", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/phantom.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--findings", default=DEFAULT_FINDINGS)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    case = generate_case(args.size, args.seed, args.findings)
    impression = case.report.splitlines()[-1]
    t = case.truth
    title = (
        f"phantom {args.size}³, seed {args.seed}, {case.spacing:g} mm — {textwrap.shorten(impression, 110)}\n"
        f"effusion L/R {t['effusion_ml']['left']:.0f}/{t['effusion_ml']['right']:.0f} mL, "
        f"CTR {t['cardiothoracic_ratio']:.2f}, %LAA-950 {t['laa950_percent']:.1f}, "
        f"airway {t['airway_volume_mm3'] / 1000:.1f} mL, lungs {t['lung_volume_ml']['total'] / 1000:.2f} L"
    )
    out = Path(args.out)
    masks = {"lobe": case.lobe, "airway": case.airway, "vessel": case.vessel}
    try:
        save_montage(
            out,
            case.ct_hu,
            overwrite=args.overwrite,
            masks=masks,
            spacing=(case.spacing,) * 3,
            index=slice_index(case),
            title=title,
        )
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main("phantom figure", main)
