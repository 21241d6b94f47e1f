"""Files of a generated sample: CT and label maps as NIfTI (RAS, true affine), a JSON sidecar, a PNG montage.

The sample arrives in the network layout of its weights' conventions and is decoded with them, so every written
volume is in RAS whatever the weights (this bundle's or the official MedSyn ones).

``<id>_ct.nii.gz`` (int16 HU), ``<id>_lobe.nii.gz`` (uint8 0-5), ``<id>_airway.nii.gz``, ``<id>_vessel.nii.gz``
(uint8 0/1), ``<id>.json`` (how it was made, ``"synthetic": true``) and ``<id>.png``; with ``label``
``<id>_label.nii.gz`` too (lobes, airway and vessel in one map, for a segmentation dataset).

Every file is written atomically and the sidecar last, so a sample is complete exactly when its sidecar and the
files it lists exist. Writing a sample again first removes its sidecar, then its other old files: a process killed
at any point leaves a sample without a sidecar (visibly incomplete, made again by the next run), never new volumes
beside an old description. A finished sample is replaced only with ``overwrite``, and that is decided by
:meth:`SampleWriter.plan` before any sampling.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import scripts
from scripts.conventions import CHANNELS, MEDSYN_MONAI, ModelConventions, combine_labels
from scripts.data.io import OutputExistsError, remove_stale_temporaries, write_json, write_nifti
from scripts.visualization import save_montage

logger = logging.getLogger(__name__)

SYNTHETIC_DESCRIPTION = "synthetic: MedSyn-MONAI generated, not a patient"
_DTYPES = {"ct": "int16", "lobe": "uint8", "airway": "uint8", "vessel": "uint8", "label": "uint8"}
OVERWRITE_HINT = "pass --overwrite true to replace it, or another --output_dir"


def decode_sample(volume: torch.Tensor, conventions: ModelConventions = MEDSYN_MONAI) -> dict[str, np.ndarray]:
    """(4, D, H, W) network-layout volume → RAS (X, Y, Z) arrays: ``ct`` int16 HU and uint8 label maps.

    Args:
        volume: the sample in network units and the network layout of ``conventions``.
        conventions: the conventions of the weights that made it.
    """
    if volume.ndim != 4 or volume.shape[0] != len(CHANNELS):
        raise ValueError(f"expected a (4, D, H, W) volume, got shape {tuple(volume.shape)}")
    if not torch.isfinite(volume).all():  # a diverged sample must never become a plausible-looking file
        raise FloatingPointError(
            f"the sample holds {int((~torch.isfinite(volume)).sum())} NaN or inf values (diverged sampling: check "
            "the weights, --guidance_scale and the steps); nothing was written"
        )
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

    def paths(self, sample_id: str, label: bool = False) -> dict[str, Path]:
        """The files of ``sample_id`` by key (``ct``, ``lobe``, ``airway``, ``vessel``[, ``label``], ``json``[,
        ``png``]); the sidecar ``json`` is the last written."""
        names = {name: f"{sample_id}_{name}.nii.gz" for name in (*CHANNELS, "label")[: len(CHANNELS) + label]}
        if self.png:
            names["png"] = f"{sample_id}.png"
        names["json"] = f"{sample_id}.json"
        return {key: self.output_dir / name for key, name in names.items()}

    def _sidecar(self, sample_id: str) -> dict[str, Any] | None:
        """The sample's sidecar, or None when there is none; one that is not this bundle's is refused."""
        path = self.paths(sample_id)["json"]
        if not path.exists():
            return None
        try:
            sidecar = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OutputExistsError(f"{path} exists and is not a sample sidecar ({err}); {OVERWRITE_HINT}") from None
        if not isinstance(sidecar, dict) or sidecar.get("synthetic") is not True:
            raise OutputExistsError(f"{path} exists and is not a MedSyn-MONAI sample sidecar; {OVERWRITE_HINT}")
        return sidecar

    def plan(self, sample_id: str, request: dict[str, Any], label: bool = False) -> str:
        """``"skip"`` when ``sample_id`` is finished (sidecar and files present) for the same ``request`` (the
        sidecar holds each of its fields with the same value) and ``overwrite`` is off, else ``"write"``: nothing
        there, an incomplete sample (no sidecar: an interrupted run; or a file of the same request missing), or
        ``overwrite``. Raises :class:`~scripts.data.io.OutputExistsError` for a sample made for another request
        without ``overwrite``. Call it for every sample before sampling any."""
        sidecar = None if self.overwrite else self._sidecar(sample_id)
        if sidecar is None:
            return "write"
        paths = self.paths(sample_id, label)
        differ = [key for key, value in request.items() if sidecar.get(key) != value]
        if differ:
            raise OutputExistsError(
                f"{paths['json']}: sample {sample_id} was made for another request ({', '.join(differ)} "
                f"{'differs' if len(differ) == 1 else 'differ'}); "
                f"{OVERWRITE_HINT}"
            )
        return "skip" if all(path.exists() for path in paths.values()) else "write"

    def write(
        self,
        sample_id: str,
        volume: torch.Tensor,
        metadata: dict[str, Any],
        affine: np.ndarray,
        label: bool = False,
    ) -> dict[str, Path]:
        """Decode and write one sample; returns the written paths.

        Args:
            sample_id: file name stem.
            volume: (4, D, H, W) network-layout volume in network units.
            metadata: fields for the sidecar (prompt, seed, guidance, steps, weights, ...).
            affine: RAS affine of the sample's grid (of fixed inputs, or the model grid's).
            label: also write the combined label map ``<id>_label.nii.gz``.

        Raises:
            OutputExistsError: the sample is finished and ``overwrite`` is off.
            FloatingPointError: the volume holds NaN or inf (nothing is written or removed then).
        """
        paths = self.paths(sample_id, label)
        finished = self._sidecar(sample_id) is not None and all(path.exists() for path in paths.values())
        if finished and not self.overwrite:
            raise OutputExistsError(f"{paths['json']} already exists; {OVERWRITE_HINT}")
        arrays = decode_sample(volume, self.conventions)
        if label:
            arrays["label"] = combine_labels(arrays["lobe"], arrays["airway"], arrays["vessel"])
        shape = arrays["ct"].shape
        affine = np.asarray(affine, dtype=np.float64)
        self._clear(sample_id)
        for name in paths:
            if name in arrays:
                write_nifti(paths[name], arrays[name], affine, _DTYPES[name], True, SYNTHETIC_DESCRIPTION)
                logger.info(f"wrote {paths[name]}")
        spacing = [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]
        if self.png:
            title = str(metadata.get("prompt") or "no report")
            masks = {name: arrays[name] for name in CHANNELS[1:]}
            save_montage(paths["png"], arrays["ct"], overwrite=True, masks=masks, spacing=spacing, title=title)
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
        write_json(paths["json"], sidecar, overwrite=True)  # last: the sample is complete from here on
        logger.info(f"wrote {paths['json']}")
        return paths

    def _clear(self, sample_id: str) -> None:
        """Remove the old files of ``sample_id``, the sidecar first (the sample is incomplete from then on), and the
        temporaries an interrupted write of them left."""
        paths = self.paths(sample_id, label=True)
        for key in ("json", *[k for k in paths if k != "json"]):
            if paths[key].exists():
                paths[key].unlink()
                logger.info(f"removed the old {paths[key].name}")
        for path in paths.values():
            for stale in remove_stale_temporaries(self.output_dir, path.name):
                logger.info(f"removed {stale.name}, left by an interrupted write")
