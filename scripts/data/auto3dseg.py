"""A synthetic segmentation dataset as MONAI Auto3DSeg reads it: ``datalist.json`` and ``data_src_cfg.yaml``.

Every path the dataset holds is relative to its folder (``datalist: datalist.json``, ``dataroot: .``, image and
label file names in the datalist), so the folder can be moved, archived or shared as it is. Auto3DSeg resolves
those paths against the working directory: run it from the dataset folder, or give it :func:`auto3dseg_input`,
which resolves them against the folder wherever the caller is.

Auto3DSeg takes the number of classes from the label values its data analysis finds, so a class that appears in no
label would silently give a network with fewer outputs than the dataset declares: :func:`absent_label_classes` finds
such classes for the dataset's writer to report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from scripts.data.io import write_text

logger = logging.getLogger(__name__)

DATA_SOURCE_FILE = "data_src_cfg.yaml"
DATALIST_FILE = "datalist.json"


def write_data_source(root: str | os.PathLike, modality: str = "CT") -> Path:
    """Write ``root/data_src_cfg.yaml`` (modality, datalist, dataroot) with paths relative to ``root``."""
    text = yaml.safe_dump({"modality": modality, "datalist": DATALIST_FILE, "dataroot": "."}, sort_keys=False)
    return write_text(Path(root) / DATA_SOURCE_FILE, text, overwrite=True)


def auto3dseg_input(path: str | os.PathLike) -> dict[str, Any]:
    """The ``input`` for ``monai.apps.auto3dseg.AutoRunner`` (or the arguments of ``DataAnalyzer``) from a dataset
    folder or its ``data_src_cfg.yaml``: its settings, with ``datalist`` and ``dataroot`` resolved against the folder.

    Raises:
        FileNotFoundError: no ``data_src_cfg.yaml`` there.
        ValueError: the file is not a mapping holding ``datalist`` and ``dataroot``.
    """
    path = Path(path)
    source = path / DATA_SOURCE_FILE if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file; write the dataset with `run synthesize` (docs/README.md)")
    settings = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not isinstance(settings, Mapping) or not {"datalist", "dataroot"} <= settings.keys():
        raise ValueError(f"{source} is no Auto3DSeg data source: it needs datalist and dataroot entries")
    folder = source.parent.resolve()
    return {
        **settings,
        "datalist": str(folder / settings["datalist"]),
        "dataroot": str(folder / settings["dataroot"]),
    }


def absent_label_classes(
    root: str | os.PathLike, items: Iterable[Mapping[str, Any]], classes: Mapping[int, str]
) -> dict[int, str]:
    """The declared ``classes`` (value → name) found in none of the items' ``label`` maps (paths relative to
    ``root``), each logged in a warning. Reads every label map (about 0.3 s for a 256³ one)."""
    present = np.zeros(256, dtype=bool)
    for item in items:
        values = np.asarray(nib.load(str(Path(root) / item["label"])).dataobj, dtype=np.uint8)
        present |= np.bincount(values.ravel(), minlength=256).astype(bool)
    absent = {int(value): name for value, name in classes.items() if not present[int(value)]}
    if absent:
        named = ", ".join(f"{value} ({name})" for value, name in absent.items())
        logger.warning(
            f"{root}: no label map holds class {named}; Auto3DSeg takes the classes from the labels and would build "
            "a network without it: generate more cases (other prompts or seeds) into this folder"
        )
    return absent


__all__ = ["DATALIST_FILE", "DATA_SOURCE_FILE", "absent_label_classes", "auto3dseg_input", "write_data_source"]
