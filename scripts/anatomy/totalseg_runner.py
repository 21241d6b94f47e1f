"""The part of the TotalSegmentator backend that runs beside TotalSegmentator itself.

It imports only the standard library, NumPy, nibabel and ``totalsegmentator``, so it also runs in a separate
environment that holds TotalSegmentator (recommended: TotalSegmentator replaces packages the bundle needs)::

    PYTHONPATH=/path/to/bundle /path/to/totalseg-env/bin/python -m scripts.anatomy.totalseg_runner \
        --input ct.nii.gz --out_dir DIR --task lung_vessels --spec '{"vessel": {"lung_vessels": 1}}' --device cpu

It calls ``totalsegmentator.python_api.totalsegmentator`` (multilabel output, nothing saved by TotalSegmentator)
and writes one ``<structure>.nii.gz`` per entry of ``spec``: the classes named there mapped to the given labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


def class_ids(class_map: dict[int, str], names: list[str], task: str) -> dict[str, int]:
    """TotalSegmentator's label value of each class name; an error names the missing classes."""
    inverse = {name: int(idx) for idx, name in class_map.items()}
    missing = [n for n in names if n not in inverse]
    if missing:
        raise ValueError(f"TotalSegmentator task {task} has no class(es) {missing}")
    return {n: inverse[n] for n in names}


def run(
    input_path: str,
    out_dir: str,
    task: str,
    spec: dict[str, dict[str, int]],
    device: str,
    fast: bool = False,
    roi_subset: list[str] | None = None,
) -> list[str]:
    """Run one TotalSegmentator task on ``input_path`` and write the structures of ``spec``.

    Args:
        input_path: CT NIfTI in HU.
        out_dir: folder for ``<structure>.nii.gz``.
        task: TotalSegmentator task, e.g. ``lung_vessels`` or ``total``.
        spec: structure → {TotalSegmentator class name → output label}.
        device: ``gpu`` or ``cpu``.
        fast: TotalSegmentator's ``fast`` option (3 mm model of the total task).
        roi_subset: classes to predict (total task only); speeds it up.

    Returns:
        the written file paths.
    """
    from totalsegmentator.map_to_binary import class_map
    from totalsegmentator.python_api import totalsegmentator

    kwargs: dict[str, Any] = {"task": task, "ml": True, "device": device, "quiet": True}
    if fast:
        kwargs["fast"] = True
    if roi_subset:
        kwargs["roi_subset"] = list(roi_subset)
    seg = totalsegmentator(nib.load(input_path), None, **kwargs)
    data = np.asanyarray(seg.dataobj)
    written = []
    for structure, classes in spec.items():
        ids = class_ids(class_map[task], list(classes), task)
        out = np.zeros(data.shape, dtype=np.uint8)
        for name, label in classes.items():
            out[data == ids[name]] = int(label)
        path = Path(out_dir, f"{structure}.nii.gz")
        nib.save(nib.Nifti1Image(out, seg.affine), str(path))
        written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--spec", required=True, help="JSON: structure -> {class name -> label}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--roi_subset", default="", help="comma-separated class names")
    args = parser.parse_args(argv)
    roi = [r for r in args.roi_subset.split(",") if r]
    run(args.input, args.out_dir, args.task, json.loads(args.spec), args.device, args.fast, roi or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
