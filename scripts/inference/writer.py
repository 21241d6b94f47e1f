"""Files of a generated sample: CT and label maps as NIfTI (RAS, true affine), a JSON sidecar, a PNG montage.

The sample arrives in the network layout of its weights' conventions and is decoded with them, so every written
volume is in RAS whatever the weights (this bundle's or the official MedSyn ones).

``<id>_ct.nii.gz`` (int16 HU), ``<id>_lobe.nii.gz`` (uint8 0-5), ``<id>_airway.nii.gz``, ``<id>_vessel.nii.gz``
(uint8 0/1), ``<id>.json`` (how it was made, ``"synthetic": true``) and ``<id>.png``. Every file is written
atomically; the sidecar is written last, so its presence means the sample is complete. Nothing existing is
replaced unless ``overwrite`` is set, and that is checked before any work is done.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import scripts
from scripts.conventions import CHANNELS, MEDSYN_MONAI, ModelConventions
from scripts.data.io import OutputExistsError, write_json, write_nifti
from scripts.visualization import save_montage

logger = logging.getLogger(__name__)

SYNTHETIC_DESCRIPTION = "synthetic: MedSyn-MONAI generated, not a patient"
_DTYPES = {"ct": "int16", "lobe": "uint8", "airway": "uint8", "vessel": "uint8"}


def decode_sample(volume: torch.Tensor, conventions: ModelConventions = MEDSYN_MONAI) -> dict[str, np.ndarray]:
    """(4, D, H, W) network-layout volume → RAS (X, Y, Z) arrays: ``ct`` int16 HU and uint8 label maps.

    Args:
        volume: the sample in network units and the network layout of ``conventions``.
        conventions: the conventions of the weights that made it.
    """
    if volume.ndim != 4 or volume.shape[0] != len(CHANNELS):
        raise ValueError(f"expected a (4, D, H, W) volume, got shape {tuple(volume.shape)}")
    return conventions.decode_ras(volume.detach().float().cpu().numpy())


class SampleWriter:
    """Write generated samples into ``output_dir``.

    Args:
        output_dir: folder for the files (created when missing).
        conventions: the conventions of the weights whose samples are written (layout and mask decoding).
        overwrite: replace existing files of the same sample id.
        png: also write the montage.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        conventions: ModelConventions = MEDSYN_MONAI,
        overwrite: bool = False,
        png: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.conventions = conventions
        self.overwrite = overwrite
        self.png = png

    def paths(self, sample_id: str) -> dict[str, Path]:
        names = {name: f"{sample_id}_{name}.nii.gz" for name in CHANNELS}
        names["json"] = f"{sample_id}.json"
        if self.png:
            names["png"] = f"{sample_id}.png"
        return {key: self.output_dir / name for key, name in names.items()}

    def check_free(self, sample_id: str) -> None:
        """Raise before generating when any file of ``sample_id`` exists and overwriting is off."""
        if self.overwrite:
            return
        taken = [p.name for p in self.paths(sample_id).values() if p.exists()]
        if taken:
            raise OutputExistsError(
                f"{self.output_dir}: {', '.join(taken)} already exist; pass --overwrite true or another --output_dir"
            )

    def write(
        self,
        sample_id: str,
        volume: torch.Tensor,
        metadata: dict[str, Any],
        affine: np.ndarray,
    ) -> dict[str, Path]:
        """Decode and write one sample; returns the written paths.

        Args:
            sample_id: file name stem.
            volume: (4, D, H, W) network-layout volume in network units.
            metadata: fields for the sidecar (prompt, seed, guidance, steps, weights, ...).
            affine: RAS affine of the sample's grid (of fixed inputs, or the model grid's).
        """
        self.check_free(sample_id)
        arrays = decode_sample(volume, self.conventions)
        shape = arrays["ct"].shape
        affine = np.asarray(affine, dtype=np.float64)
        paths = self.paths(sample_id)
        for name in CHANNELS:
            write_nifti(paths[name], arrays[name], affine, _DTYPES[name], self.overwrite, SYNTHETIC_DESCRIPTION)
            logger.info(f"wrote {paths[name]}")
        spacing = [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]
        if self.png:
            title = str(metadata.get("prompt") or "no report")
            masks = {name: arrays[name] for name in CHANNELS[1:]}
            save_montage(
                paths["png"], arrays["ct"], overwrite=self.overwrite, masks=masks, spacing=spacing, title=title
            )
            logger.info(f"wrote {paths['png']}")
        sidecar = {
            "id": sample_id,
            "synthetic": True,
            "description": SYNTHETIC_DESCRIPTION,
            **metadata,
            "shape": list(shape),
            "spacing_mm": spacing,
            "orientation": "RAS",
            "conventions": self.conventions.as_dict(),
            "files": {key: p.name for key, p in paths.items() if key != "json"},
            "bundle_version": scripts.__version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(paths["json"], sidecar, self.overwrite)
        logger.info(f"wrote {paths['json']}")
        return paths
