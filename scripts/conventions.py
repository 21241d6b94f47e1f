"""One place for the data conventions every part of the bundle shares (SPEC.md §3).

Intensities, channel order, label encodings and the network's axis layout live here and nowhere else:
transforms, training, inference and evaluation all call these functions. Every function accepts NumPy arrays
and PyTorch tensors alike and returns the same kind it was given.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

# --- intensities -----------------------------------------------------------------------------------------------
HU_MIN = -1024.0
HU_MAX = 600.0
HU_RANGE = HU_MAX - HU_MIN  # 1624 HU map onto [-1, 1]

# --- channels --------------------------------------------------------------------------------------------------
CHANNELS = ("ct", "lobe", "airway", "vessel")
CT, LOBE, AIRWAY, VESSEL = range(4)
MASK_KEYS = CHANNELS[1:]
NUM_CHANNELS = len(CHANNELS)

# lungmask LTRCLobes label order (0 is background)
LOBE_LABELS = {
    1: "left upper lobe",
    2: "left lower lobe",
    3: "right upper lobe",
    4: "right middle lobe",
    5: "right lower lobe",
}
NUM_LOBES = len(LOBE_LABELS)
LEFT_LUNG, RIGHT_LUNG = 1, 2  # lung sides, as the lobe map names them: lobes 1-2 left, 3-5 right

# --- one label map per CT (Auto3DSeg datasets, the segmentation entry for MONAI Label) ----------------------------
# Lobes keep 1..5; airway then vessel are painted over them, so where masks overlap the vessel label wins.
AIRWAY_LABEL = 6
VESSEL_LABEL = 7
SEGMENTATION_LABELS = {0: "background", **LOBE_LABELS, AIRWAY_LABEL: "airway", VESSEL_LABEL: "pulmonary vessel"}
NUM_SEGMENTATION_LABELS = len(SEGMENTATION_LABELS)

# --- geometry --------------------------------------------------------------------------------------------------
LOWRES_FACTOR = 4  # 256³ → 64³ by nearest-neighbour striding
DEFAULT_SIZE = 256
# The network's three spatial axes (D, H, W) as an orientation code: D runs over axial slices from head to feet,
# the per-slice convolutions and attention act on H (towards the patient's right) and W (towards posterior).
# This is the layout of the official MedSyn data, so official weights load without permuting any kernel.
# Volumes are read and written in RAS; `Orientationd(axcodes=NETWORK_AXCODES)` turns them into this layout
# (the affine follows), and the affine turns them back.
NETWORK_AXCODES = "IRP"
OUTPUT_AXCODES = "RAS"

# --- text ------------------------------------------------------------------------------------------------------
TEXT_TOKENS = 192  # token features per report the low-resolution network attends to


def _clip(x: Array, low: float, high: float) -> Array:
    return x.clip(low, high)


def hu_to_unit(hu: Array) -> Array:
    """HU → [-1, 1]: clip to [HU_MIN, HU_MAX] then map linearly."""
    if isinstance(hu, np.ndarray):
        hu = hu.astype(np.float32, copy=False)
    else:
        hu = hu.float()
    return (_clip(hu, HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE * 2.0 - 1.0


def unit_to_hu(x: Array) -> Array:
    """[-1, 1] → HU (inverse of :func:`hu_to_unit` on the window); values outside [-1, 1] are clipped first."""
    return (_clip(x, -1.0, 1.0) + 1.0) / 2.0 * HU_RANGE + HU_MIN


def encode_lobe(label: Array) -> Array:
    """Lobe labels 0..5 → [-1, 1] as ``label / 5 * 2 - 1``."""
    if isinstance(label, np.ndarray):
        label = label.astype(np.float32)
    else:
        label = label.float()
    return label / NUM_LOBES * 2.0 - 1.0


def decode_lobe(x: Array) -> Array:
    """[-1, 1] → lobe labels 0..5 (uint8) by rounding to the nearest label."""
    label = _clip((x + 1.0) / 2.0 * NUM_LOBES, 0, NUM_LOBES).round()
    return label.astype(np.uint8) if isinstance(label, np.ndarray) else label.to(torch.uint8)


def lung_sides(lobe: Array) -> Array:
    """Lobe labels 0..5 → lung sides (uint8): 0 background, ``LEFT_LUNG`` for lobes 1-2, ``RIGHT_LUNG`` for 3-5."""
    if isinstance(lobe, np.ndarray):
        return np.where(lobe == 0, 0, np.where(lobe <= 2, LEFT_LUNG, RIGHT_LUNG)).astype(np.uint8)
    return torch.where(lobe == 0, 0, torch.where(lobe <= 2, LEFT_LUNG, RIGHT_LUNG)).to(torch.uint8)


def encode_binary(mask: Array) -> Array:
    """Binary mask {0, nonzero} → {-1, 1}."""
    if isinstance(mask, np.ndarray):
        return np.where(mask > 0, 1.0, -1.0).astype(np.float32)
    return torch.where(mask > 0, 1.0, -1.0).float()


def decode_binary(x: Array) -> Array:
    """[-1, 1] → binary mask (uint8) by thresholding at 0."""
    return (x > 0).astype(np.uint8) if isinstance(x, np.ndarray) else (x > 0).to(torch.uint8)


_ENCODERS = {"ct": hu_to_unit, "lobe": encode_lobe, "airway": encode_binary, "vessel": encode_binary}
_DECODERS = {"ct": unit_to_hu, "lobe": decode_lobe, "airway": decode_binary, "vessel": decode_binary}


def encode_channel(name: str, values: Array) -> Array:
    """Encode one named channel (``ct`` in HU, ``lobe`` 0..5, ``airway``/``vessel`` binary) to [-1, 1]."""
    if name not in _ENCODERS:
        raise ValueError(f"unknown channel {name!r}; expected one of {CHANNELS}")
    return _ENCODERS[name](values)


def decode_channel(name: str, x: Array) -> Array:
    """Decode one named channel from [-1, 1]: ``ct`` to HU (float), masks to uint8 labels."""
    if name not in _DECODERS:
        raise ValueError(f"unknown channel {name!r}; expected one of {CHANNELS}")
    return _DECODERS[name](x)


def decode_volume(x: Array) -> dict[str, Array]:
    """Split a 4-channel [-1, 1] volume (channel first, any trailing shape) into decoded named channels."""
    if x.shape[0] != NUM_CHANNELS:
        raise ValueError(f"expected {NUM_CHANNELS} channels {CHANNELS} first, got shape {tuple(x.shape)}")
    return {name: decode_channel(name, x[i]) for i, name in enumerate(CHANNELS)}


def combine_labels(lobe: Array, airway: Array, vessel: Array) -> Array:
    """Lobe labels 0..5 and binary airway / vessel masks (same shape) → one uint8 map of :data:`SEGMENTATION_LABELS`."""
    if isinstance(lobe, np.ndarray):
        label = lobe.astype(np.uint8, copy=True)
    else:
        label = lobe.to(torch.uint8, copy=True)
    label[airway > 0] = AIRWAY_LABEL
    label[vessel > 0] = VESSEL_LABEL
    return label


def ct_to_int16_hu(x: Array) -> Array:
    """[-1, 1] CT channel → int16 HU, rounded, as written to NIfTI."""
    hu = unit_to_hu(x).round()
    return hu.astype(np.int16) if isinstance(hu, np.ndarray) else hu.to(torch.int16)


def ras_to_network(volume: Array) -> Array:
    """(X, Y, Z) RAS array → (D, H, W) network layout (orientation ``NETWORK_AXCODES`` = IRP), any leading dims.

    D runs inferior (index 0 = most superior slice), H runs towards the patient's right, W towards posterior:
    the same result as MONAI's ``Orientationd(axcodes="IRP")`` on a RAS image.
    """
    if isinstance(volume, np.ndarray):
        return np.flip(np.moveaxis(volume, (-3, -2, -1), (-2, -1, -3)), axis=(-3, -1))
    return torch.flip(torch.movedim(volume, (-3, -2, -1), (-2, -1, -3)), dims=(-3, -1))


def network_to_ras(volume: Array) -> Array:
    """(D, H, W) network layout → (X, Y, Z) RAS array (inverse of :func:`ras_to_network`), any leading dims."""
    if isinstance(volume, np.ndarray):
        return np.moveaxis(np.flip(volume, axis=(-3, -1)), (-2, -1, -3), (-3, -2, -1))
    return torch.movedim(torch.flip(volume, dims=(-3, -1)), (-2, -1, -3), (-3, -2, -1))


def lowres_affine(affine: np.ndarray, factor: int = LOWRES_FACTOR) -> np.ndarray:
    """The RAS affine of the stage-1 grid, given the affine of the full model grid it is taken from.

    Stage 1 keeps network-layout voxels 0, f, 2f, ... (``downsample_nearest``). Along the axes the network layout
    flips (S→I, A→P) those are RAS voxels f-1, 2f-1, ..., so the low-resolution grid starts ``f - 1`` full voxels in
    along them and at voxel 0 along the others; its spacing is ``f`` times larger.

    Args:
        affine: 4×4 RAS affine of the full grid, indexed (x, y, z).
        factor: the downsampling factor (``LOWRES_FACTOR``).
    """
    probe = np.stack(np.meshgrid(*(np.arange(factor),) * 3, indexing="ij"))  # (3, f, f, f): each voxel's RAS index
    strided = network_to_ras(ras_to_network(probe)[:, ::factor, ::factor, ::factor])
    index_to_full = np.diag([float(factor)] * 3 + [1.0])
    index_to_full[:3, 3] = strided[:, 0, 0, 0]
    return np.asarray(affine, dtype=np.float64) @ index_to_full
