"""Files of a generated sample: CT and label maps as NIfTI (RAS, true affine), a JSON sidecar, a PNG montage.

The sample arrives in the network layout of its weights' conventions and is decoded with them, so every written
volume is in RAS whatever the weights (this bundle's or the official MedSyn ones).

``<id>_ct.nii.gz`` (int16 HU), ``<id>_lobe.nii.gz`` (uint8 0-5), ``<id>_airway.nii.gz``, ``<id>_vessel.nii.gz``
(uint8 0/1), ``<id>.json`` (how it was made, ``"synthetic": true``) and ``<id>.png``; with ``label``
``<id>_label.nii.gz`` too (lobes, airway and vessel in one map, for a segmentation dataset). With the output format
``dicom`` (or ``both``) the CT is (also) written as a DICOM series ``<id>_ct_dicom/`` and the lobe, airway and vessel
maps as one DICOM Segmentation ``<id>_seg.dcm`` (:mod:`scripts.data.dicom`).

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
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import scripts
from scripts.conventions import CHANNELS, MEDSYN_MONAI, ModelConventions, combine_labels
from scripts.data.io import (
    TEMPORARY_MARK,
    OutputExistsError,
    atomic_path,
    remove_stale_temporaries,
    write_json,
    write_nifti,
)

logger = logging.getLogger(__name__)

SYNTHETIC_DESCRIPTION = "synthetic: MedSyn-MONAI generated, not a patient"
_DTYPES = {"ct": "int16", "lobe": "uint8", "airway": "uint8", "vessel": "uint8", "label": "uint8"}
OVERWRITE_HINT = "pass --overwrite true to replace it, or another --output_dir"
OUTPUT_FORMATS = ("nifti", "dicom", "both")


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
        output_format: ``nifti`` (default), ``dicom`` (a CT series and a Segmentation instead of the NIfTI volumes)
            or ``both``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        conventions: ModelConventions = MEDSYN_MONAI,
        overwrite: bool = False,
        png: bool = True,
        output_format: str = "nifti",
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
        self.output_dir = Path(output_dir)
        self.conventions = conventions
        self.overwrite = overwrite
        self.png = png
        self.output_format = output_format

    def paths(self, sample_id: str, label: bool = False, output_format: str | None = None) -> dict[str, Path]:
        """The files of ``sample_id`` by key (``ct``, ``lobe``, ``airway``, ``vessel``[, ``label``] as NIfTI;
        ``ct_dicom`` (a folder) and ``seg_dicom`` as DICOM; ``json``[, ``png``]) in the writer's output format, or
        in ``output_format`` ("both": every file a sample can have); the sidecar ``json`` is the last written."""
        output_format = output_format or self.output_format
        names = {}
        if output_format != "dicom":
            names = {name: f"{sample_id}_{name}.nii.gz" for name in (*CHANNELS, "label")[: len(CHANNELS) + label]}
        if output_format != "nifti":
            names.update(ct_dicom=f"{sample_id}_ct_dicom", seg_dicom=f"{sample_id}_seg.dcm")
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
        if "ct_dicom" in paths:
            self._write_dicom(sample_id, paths, arrays, affine, metadata)
        spacing = [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]
        if self.png:
            from scripts.visualization import save_montage  # matplotlib only where a PNG is asked for

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

    def _write_dicom(
        self,
        sample_id: str,
        paths: dict[str, Path],
        arrays: dict[str, np.ndarray],
        affine: np.ndarray,
        metadata: dict[str, Any],
    ) -> None:
        """The CT as a DICOM series (written into a temporary folder, then renamed) and the lobe, airway and vessel
        maps as one Segmentation of it, both marked synthetic."""
        from scripts.data.dicom import write_ct_series, write_segmentation

        description = f"{sample_id} ({metadata.get('prompt_id') or 'no report'})"
        folder = paths["ct_dicom"]
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TEMPORARY_MARK, dir=self.output_dir))
        try:
            series = write_ct_series(staging, arrays["ct"], affine, f"SYNTHETIC-{sample_id}"[:64], description)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info(f"wrote {folder}/ ({len(series)} slices)")
        masks = {value: arrays["lobe"] == value for value in range(1, 6)}
        masks.update({6: arrays["airway"] > 0, 7: arrays["vessel"] > 0})
        with atomic_path(paths["seg_dicom"], overwrite=True) as tmp:
            write_segmentation(tmp, masks, affine, series, description, scripts.__version__)
        logger.info(f"wrote {paths['seg_dicom']}")

    def _clear(self, sample_id: str) -> None:
        """Remove the old files of ``sample_id`` (in any output format), the sidecar first (the sample is incomplete
        from then on), and the temporaries an interrupted write of them left."""
        paths = self.paths(sample_id, label=True, output_format="both")
        for key in ("json", *[k for k in paths if k != "json"]):
            if paths[key].is_dir():
                shutil.rmtree(paths[key])
                logger.info(f"removed the old {paths[key].name}/")
            elif paths[key].exists():
                paths[key].unlink()
                logger.info(f"removed the old {paths[key].name}")
        for path in paths.values():
            for stale in remove_stale_temporaries(self.output_dir, path.name):
                logger.info(f"removed {stale.name}, left by an interrupted write")
