"""Write phantom cases and a MONAI datalist to a folder (layout in docs/phantom.md).

::

    DIR/datalist.json                     {"training": [...], "validation": [...]}
    DIR/case_0000/ct.nii.gz               int16 HU, RAS affine, spacing FOV_MM / size
    DIR/case_0000/{lobe,airway,vessel}.nii.gz   uint8 label maps
    DIR/case_0000/tissue.nii.gz           uint8 tissue labels (heart, pleural fluid, ...; tissues.py)
    DIR/case_0000/report.txt, truth.json

Files are written atomically through ``scripts.data.io`` and byte-identical for the same arguments (nibabel's
gzip writer stores no time stamp or file name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import OutputExistsError, write_json, write_nifti, write_text
from .case import GENERATOR, PhantomCase, _as_spec, generate_case
from .findings import FindingSpec
from .geometry import check_size

VOLUMES = {
    "image": ("ct", "int16"),
    "lobe": ("lobe", "uint8"),
    "airway": ("airway", "uint8"),
    "vessel": ("vessel", "uint8"),
    "tissue": ("tissue", "uint8"),
}
DESCRIPTION = f"synthetic phantom, {GENERATOR}"


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset drawn with ``seed`` (recorded in its truth.json)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def case_files(case_id: str) -> dict[str, str]:
    """Relative paths of one case's files."""
    files = {key: f"{case_id}/{name}.nii.gz" for key, (name, _) in VOLUMES.items()}
    files["report_file"] = f"{case_id}/report.txt"
    files["truth"] = f"{case_id}/truth.json"
    return files


def write_case(out_dir: str | os.PathLike, case: PhantomCase, overwrite: bool = False) -> dict[str, Any]:
    """Write one case's files under ``out_dir/<id>/`` and return its datalist item (paths relative to out_dir)."""
    out_dir = Path(out_dir)
    case_id = case.truth["id"]
    files = case_files(case_id)
    arrays = {
        "image": case.ct_hu,
        "lobe": case.lobe,
        "airway": case.airway,
        "vessel": case.vessel,
        "tissue": case.tissue,
    }
    for key, (_, dtype) in VOLUMES.items():
        write_nifti(
            out_dir / files[key], arrays[key], case.affine, dtype=dtype, overwrite=overwrite, description=DESCRIPTION
        )
    write_text(out_dir / files["report_file"], case.report, overwrite=overwrite)
    write_json(out_dir / files["truth"], case.truth, overwrite=overwrite)
    item = {
        "id": case_id,
        "image": files["image"],
        "lobe": files["lobe"],
        "airway": files["airway"],
        "vessel": files["vessel"],
        "report": case.report,
        "report_file": files["report_file"],
        "truth": files["truth"],
    }
    return item


def write_dataset(
    out_dir: str | os.PathLike,
    num: int,
    size: int = 64,
    seed: int = 0,
    findings: FindingSpec | str | None = None,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate ``num`` cases into ``out_dir`` and write ``datalist.json``; returns the datalist path.

    Args:
        out_dir: output folder (created).
        num: number of cases (≥ 1).
        size: edge length in voxels (multiple of 8, 32..512).
        seed: dataset seed; case i uses :func:`case_seed` (seed, i).
        findings: the same request for every case (FindingSpec or string), or None for the random mix.
        val_fraction: share of cases (the last ones) listed under "validation"; at least one stays in training.
        overwrite: replace existing files; otherwise any existing output stops the run before anything is written.
        progress: print one line per case.
    """
    size = check_size(size)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be a positive integer (number of cases), got {num!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    spec = _as_spec(findings)
    out_dir = Path(out_dir)
    datalist = out_dir / "datalist.json"
    ids = [f"case_{i:04d}" for i in range(num)]
    if not overwrite:
        # refuse before spending minutes generating: any existing target stops the run
        targets = [datalist] + [out_dir / p for i in ids for p in case_files(i).values()]
        existing = [p for p in targets if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]} already exists; pass overwrite=True (CLI: --overwrite) to replace "
                f"the dataset in {out_dir}"
            )
    n_val = min(int(round(num * float(val_fraction))), num - 1)
    items = []
    for i, case_id in enumerate(ids):
        case = generate_case(size, case_seed(seed, i), spec, case_id=case_id)
        case.truth["dataset"] = {"seed": int(seed), "index": i, "num": num}
        items.append(write_case(out_dir, case, overwrite=overwrite))
        if progress:
            print(f"{case_id}: {case.report.splitlines()[-1]}", flush=True)
    write_json(datalist, {"training": items[: num - n_val], "validation": items[num - n_val :]}, overwrite=overwrite)
    return datalist
