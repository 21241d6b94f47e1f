"""The two stages' weights as one cascade: networks, model grid and conventions read from their descriptions.

The one loader of the generation entry (:class:`~scripts.inference.workflow.InferenceRunner`) and the segmentation
entry (:class:`~scripts.inference.segmentation.JointSegmentationNetwork`, MONAI Label): both stages must record the
same :class:`~scripts.conventions.ModelConventions` (official weights and this bundle's cannot be mixed), and the
model grid (spacing, size, size mode, the world frame of outputs made without an input) comes from the low-res
description's ``data``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scripts.conventions import (
    DEFAULT_SIZE,
    ModelConventions,
    atlas_grid_affine,
    atlas_grid_spacing,
    conventions_from_description,
)
from scripts.data.io import ras_affine
from scripts.data.transforms import SIZE_MODES
from scripts.networks.unet import MedSynUNet
from scripts.networks.weights import WeightsNotFoundError, load_network, read_description

WEIGHTS_HINT = (
    "train them with `python -m monai.bundle run training --config_file configs/train.json` (docs/training.md), "
    "or convert official MedSyn weights with `python -m scripts.convert_official` (docs/official_weights.md), "
    "and point --lowres_weights / --sr_weights at the .pt files"
)


@dataclass(frozen=True)
class ModelGrid:
    """The full-resolution grid a cascade works on.

    Attributes:
        spacing: voxel size (x, y, z) in mm, RAS order.
        size: edge of the cube (256 for MedSyn); stage 1 works on ``size / LOWRES_FACTOR``.
        size_mode: how inputs are put on the grid (``pad_crop``, ``resize``, ``atlas``; see
            :func:`scripts.data.transforms.build_preprocessing`).
        affine: RAS affine of the grid for samples made without an input volume (the official weights: the atlas
            frame), or None to centre the grid on the world origin.
    """

    spacing: tuple[float, float, float]
    size: int
    size_mode: str
    affine: np.ndarray | None = None

    @property
    def output_affine(self) -> np.ndarray:
        """The RAS affine of samples made without an input volume."""
        if self.affine is not None:
            return np.array(self.affine, dtype=np.float64)
        return ras_affine(self.spacing, (self.size,) * 3)

    @property
    def input_spacing(self) -> tuple[float, float, float] | None:
        """The spacing inputs are resampled to: None in ``atlas`` mode (inputs are on the atlas grid already)."""
        return None if self.size_mode == "atlas" else self.spacing


def model_grid(
    description: dict[str, Any], spacing: Sequence[float] | None = None, size_mode: str | None = None
) -> ModelGrid:
    """The model grid of low-res weights, from their description's ``data``, with the command line's overrides.

    Weights trained on the atlas grid (``size_mode`` ``atlas`` recorded, e.g. fine-tuned official weights whose
    training data had no spacing of their own) get the atlas grid's spacing and world frame.

    Args:
        description: the low-res weights' JSON description (:func:`scripts.networks.weights.read_description`).
        spacing: voxel size in mm (x, y, z) to use instead of the training grid's (the recorded world frame is then
            dropped: outputs are centred). Not for weights of the atlas grid, whose spacing is the atlas's.
        size_mode: how to put inputs on the grid instead of the recorded way.
    """
    data = description.get("data") or {}
    mode = size_mode or data.get("size_mode", "pad_crop")
    if mode not in SIZE_MODES:
        raise ValueError(f"size_mode must be one of {SIZE_MODES}, got {mode!r}")
    size = int(data.get("size", DEFAULT_SIZE))
    on_atlas = data.get("size_mode") == "atlas"
    if spacing and on_atlas:
        raise ValueError(
            f"--spacing does not apply to weights of the MedSyn atlas grid (its spacing is "
            f"{[round(s, 4) for s in atlas_grid_spacing(size)]} mm); leave it out"
        )
    recorded = data.get("spacing") or (atlas_grid_spacing(size) if on_atlas else (1.0, 1.0, 1.0))
    affine = data.get("affine")
    if affine is None and on_atlas and not data.get("spacing"):
        affine = atlas_grid_affine(size)
    affine = None if spacing or affine is None else np.asarray(affine, dtype=np.float64)
    return ModelGrid(tuple(float(s) for s in (spacing or recorded)), size, mode, affine)


@dataclass(frozen=True)
class CascadeDescription:
    """What the two stages' descriptions say together.

    Attributes:
        lowres: the stage-1 description; sr: the stage-2 description, or None without stage 2.
        conventions: the conventions both record.
        grid: the model grid (from the stage-1 description and the overrides).
    """

    lowres: dict[str, Any]
    sr: dict[str, Any] | None
    conventions: ModelConventions
    grid: ModelGrid


def describe_cascade(
    lowres_weights: str | os.PathLike,
    sr_weights: str | os.PathLike | None,
    spacing: Sequence[float] | None = None,
    size_mode: str | None = None,
    require_sr: bool = False,
) -> CascadeDescription:
    """Read and check the two stages' descriptions without loading any weights.

    Raises:
        WeightsNotFoundError: a missing weights file or description (with where to get them).
        ValueError: a description of the wrong stage, or stages recording different conventions.
    """
    if require_sr and not sr_weights:
        raise WeightsNotFoundError(f"this needs stage-2 (sr) weights: {WEIGHTS_HINT}")
    lowres = read_description(lowres_weights, "lowres", WEIGHTS_HINT)
    sr = read_description(sr_weights, "sr", WEIGHTS_HINT) if sr_weights else None
    conventions = conventions_from_description(lowres)
    if sr is not None and conventions_from_description(sr) != conventions:
        raise ValueError(
            f"{lowres_weights} records conventions {conventions.name!r} but {sr_weights} records "
            f"{conventions_from_description(sr).name!r}: use two stages trained or converted the same way"
        )
    return CascadeDescription(lowres, sr, conventions, model_grid(lowres, spacing, size_mode))


def load_cascade(
    lowres_weights: str | os.PathLike,
    sr_weights: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    spacing: Sequence[float] | None = None,
    size_mode: str | None = None,
    require_sr: bool = False,
) -> tuple[MedSynUNet, MedSynUNet | None, CascadeDescription]:
    """Check the descriptions (:func:`describe_cascade`), then load both networks strictly, in eval mode.

    Returns:
        (stage-1 network on ``device``, stage-2 network on the CPU or None, the descriptions).
    """
    described = describe_cascade(lowres_weights, sr_weights, spacing, size_mode, require_sr)
    lowres, _ = load_network(lowres_weights, device=device, info=described.lowres)
    sr = load_network(sr_weights, info=described.sr)[0] if sr_weights else None
    return lowres, sr, described


__all__ = ["WEIGHTS_HINT", "CascadeDescription", "ModelGrid", "describe_cascade", "load_cascade", "model_grid"]
