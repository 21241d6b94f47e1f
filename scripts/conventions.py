"""One place for the data conventions every part of the bundle shares (docs/official_weights.md).

The file side (volumes in RAS, CT in HU, the HU window, lobe labels 0..5, channel order) is the same for all weights
and is module-level here. The network side (axis layout, airway / vessel encoding, the sampler's final evaluation)
differs between this bundle's weights and the official MedSyn weights: it is a :class:`ModelConventions` recorded
in every weights description. Transforms, training, inference and evaluation all call these functions and methods;
every one accepts NumPy arrays and PyTorch tensors alike and returns the same kind it was given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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
# Volumes are read and written in RAS; the network sees them in the axis layout of its weights' conventions
# (ModelConventions.axcodes), and the affine turns them back.

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


def encode_binary(mask: Array, values: tuple[float, float] = (-1.0, 1.0)) -> Array:
    """Binary mask {0, nonzero} → ``values`` (absent, present) in network units."""
    absent, present = (float(v) for v in values)
    if isinstance(mask, np.ndarray):
        return np.where(mask > 0, present, absent).astype(np.float32)
    return torch.where(mask > 0, present, absent).float()


def decode_binary(x: Array, threshold: float = 0.0) -> Array:
    """Network units → binary mask (uint8): 1 where ``x`` is above ``threshold`` (the midpoint of the encoding)."""
    return (x > threshold).astype(np.uint8) if isinstance(x, np.ndarray) else (x > threshold).to(torch.uint8)


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


# --- the network side: conventions recorded per weights ---------------------------------------------------------


def _ras_to(axcodes: str) -> np.ndarray:
    """nibabel orientation (3, 2): for each RAS axis, the axis of the ``axcodes`` layout it becomes and its flip."""
    from nibabel import orientations

    return orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientations.axcodes2ornt(tuple(axcodes)))


@dataclass(frozen=True)
class ModelConventions:
    """How one pair of weights sees a volume: the network side of the data conventions (the file side, RAS volumes in
    HU and lobe labels 0..5, is the same for all weights and lives in the module functions above).

    Every weights description records its conventions (``"conventions"`` in ``NAME.json``, see
    :func:`conventions_from_description`); training, inference, anatomy control and segmentation read them from there,
    so weights trained one way are never fed data laid out another way. Two presets exist: :data:`MEDSYN_MONAI` (this
    bundle's own weights) and :data:`MEDSYN_OFFICIAL` (converted official MedSyn weights; evidence for each field in
    docs/official_weights.md).

    Args:
        name: a short name for logs and sidecars.
        axcodes: orientation code of the network's (D, H, W) axes: each letter is the direction an index runs towards
            (``IRP``: D head → feet, H towards the patient's right, W towards posterior).
        binary_values: (absent, present) values of the airway and vessel channels in network units; decoded by
            thresholding at their midpoint. The lobe channel is ``label / 5 * 2 - 1`` and the CT the HU window in
            both presets.
        extra_final_evaluation: the sampler evaluates the network once more at t = 0 and returns that x̂0 (N + 1
            evaluations for N steps, as the official loops do); False: the step landing on t = 0 returns x̂0.
    """

    name: str
    axcodes: str
    binary_values: tuple[float, float]
    extra_final_evaluation: bool

    def __post_init__(self) -> None:
        code = str(self.axcodes).upper()
        axes = sorted("LRAPIS".find(c) // 2 for c in code if c in "LRAPIS")
        if len(code) != 3 or axes != [0, 1, 2]:
            raise ValueError(f"axcodes must name one direction of each axis (e.g. 'IRP', 'SAL'), got {self.axcodes!r}")
        values = tuple(float(v) for v in self.binary_values)
        if len(values) != 2 or values[0] == values[1] or not all(-1.0 <= v <= 1.0 for v in values):
            raise ValueError(f"binary_values must be two different values in [-1, 1], got {self.binary_values!r}")
        object.__setattr__(self, "axcodes", code)
        object.__setattr__(self, "binary_values", values)
        object.__setattr__(self, "extra_final_evaluation", bool(self.extra_final_evaluation))

    # --- description -------------------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written into weights descriptions."""
        return {
            "name": self.name,
            "axcodes": self.axcodes,
            "binary_values": list(self.binary_values),
            "extra_final_evaluation": self.extra_final_evaluation,
        }

    # --- channels ----------------------------------------------------------------------------------------------

    @property
    def binary_threshold(self) -> float:
        """Where airway and vessel values are cut: the midpoint of :attr:`binary_values`."""
        return (self.binary_values[0] + self.binary_values[1]) / 2.0

    def encode(self, name: str, values: Array) -> Array:
        """Encode one named channel (``ct`` in HU, ``lobe`` 0..5, ``airway``/``vessel`` binary) to network units."""
        if name == "ct":
            return hu_to_unit(values)
        if name == "lobe":
            return encode_lobe(values)
        if name in ("airway", "vessel"):
            return encode_binary(values, self.binary_values)
        raise ValueError(f"unknown channel {name!r}; expected one of {CHANNELS}")

    def decode(self, name: str, x: Array) -> Array:
        """Decode one named channel from network units: ``ct`` to HU (float), masks to uint8 labels."""
        if name == "ct":
            return unit_to_hu(x)
        if name == "lobe":
            return decode_lobe(x)
        if name in ("airway", "vessel"):
            return decode_binary(x, self.binary_threshold)
        raise ValueError(f"unknown channel {name!r}; expected one of {CHANNELS}")

    def decode_ras(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """A 4-channel network-layout volume → RAS (X, Y, Z) arrays as written to files: ``ct`` int16 HU, masks uint8."""
        if x.shape[0] != NUM_CHANNELS:
            raise ValueError(f"expected {NUM_CHANNELS} channels {CHANNELS} first, got shape {tuple(x.shape)}")
        ras = self.to_ras(np.asarray(x, dtype=np.float32))
        decoded = {
            name: ct_to_int16_hu(ras[i]) if name == "ct" else self.decode(name, ras[i])
            for i, name in enumerate(CHANNELS)
        }
        return {name: np.ascontiguousarray(array) for name, array in decoded.items()}

    def value_range(self, name: str) -> tuple[float, float]:
        """The (lowest, highest) network value a clean channel takes (background first for the masks)."""
        return self.binary_values if name in ("airway", "vessel") else (-1.0, 1.0)

    # --- axis layout -------------------------------------------------------------------------------------------

    def to_network(self, volume: Array) -> Array:
        """(X, Y, Z) RAS array → (D, H, W) network layout (orientation :attr:`axcodes`), any leading dims.

        The same result as MONAI's ``Orientation(axcodes=self.axcodes)`` on a RAS image (a view where possible).
        """
        ornt = _ras_to(self.axcodes)
        flips = tuple(axis - 3 for axis in range(3) if ornt[axis, 1] < 0)
        targets = tuple(int(out) - 3 for out in ornt[:, 0])
        if isinstance(volume, np.ndarray):
            return np.moveaxis(np.flip(volume, axis=flips) if flips else volume, (-3, -2, -1), targets)
        flipped = torch.flip(volume, dims=flips) if flips else volume
        return torch.movedim(flipped, (-3, -2, -1), targets)

    def to_ras(self, volume: Array) -> Array:
        """(D, H, W) network layout → (X, Y, Z) RAS array (inverse of :meth:`to_network`), any leading dims."""
        ornt = _ras_to(self.axcodes)
        sources = tuple(int(out) - 3 for out in ornt[:, 0])
        flips = tuple(axis - 3 for axis in range(3) if ornt[axis, 1] < 0)
        if isinstance(volume, np.ndarray):
            moved = np.moveaxis(volume, sources, (-3, -2, -1))
            return np.flip(moved, axis=flips) if flips else moved
        moved = torch.movedim(volume, sources, (-3, -2, -1))
        return torch.flip(moved, dims=flips) if flips else moved

    def lowres_affine(self, affine: np.ndarray, factor: int = LOWRES_FACTOR) -> np.ndarray:
        """The RAS affine of the stage-1 grid, given the RAS affine of the full model grid it is taken from.

        Stage 1 keeps network-layout voxels 0, f, 2f, ... (``downsample_nearest``). Along the axes the network layout
        flips those are RAS voxels f-1, 2f-1, ..., so the low-resolution grid starts ``f - 1`` full voxels in along
        them and at voxel 0 along the others; its spacing is ``f`` times larger.

        Args:
            affine: 4×4 RAS affine of the full grid, indexed (x, y, z).
            factor: the downsampling factor (``LOWRES_FACTOR``).
        """
        probe = np.stack(np.meshgrid(*(np.arange(factor),) * 3, indexing="ij"))  # (3, f, f, f): each voxel's index
        strided = self.to_ras(self.to_network(probe)[:, ::factor, ::factor, ::factor])
        index_to_full = np.diag([float(factor)] * 3 + [1.0])
        index_to_full[:3, 3] = strided[:, 0, 0, 0]
        return np.asarray(affine, dtype=np.float64) @ index_to_full

    def ras_affine(self, network_affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """The affine of the RAS-ordered array, given the affine of the same grid in network layout.

        Args:
            network_affine: 4×4 matrix from network indices (d, h, w) to world RAS mm.
            shape: the grid's (D, H, W) shape in network layout.
        """
        from nibabel import orientations

        to_ras = orientations.ornt_transform(
            orientations.axcodes2ornt(tuple(self.axcodes)), orientations.axcodes2ornt("RAS")
        )
        # inv_ornt_aff maps indices of the reoriented (RAS) array back to indices of the network-layout array
        return np.asarray(network_affine, dtype=np.float64) @ orientations.inv_ornt_aff(to_ras, tuple(shape))


# This bundle's own weights: D head → feet, H towards the patient's right, W towards posterior; masks ±1; N steps are N
# network evaluations.
MEDSYN_MONAI = ModelConventions("medsyn-monai", "IRP", (-1.0, 1.0), False)
# Official MedSyn weights (docs/official_weights.md): the official data are `sitk.GetArrayFromImage` arrays of CTs
# registered to an LAS atlas, i.e. D feet → head, H towards anterior, W towards the patient's left; airway and vessel
# masks are concatenated unscaled ({0, 1}); the official loops evaluate the network once more at t = 0.
MEDSYN_OFFICIAL = ModelConventions("medsyn-official", "SAL", (0.0, 1.0), True)
CONVENTIONS = {c.name: c for c in (MEDSYN_MONAI, MEDSYN_OFFICIAL)}


def get_conventions(value: str | Mapping[str, Any] | ModelConventions | None) -> ModelConventions:
    """Conventions from a preset name, their JSON form or an instance; None means :data:`MEDSYN_MONAI`.

    Raises:
        ValueError: an unknown name or a malformed JSON form (one line naming the valid presets).
    """
    if value is None:
        return MEDSYN_MONAI
    if isinstance(value, ModelConventions):
        return value
    if isinstance(value, str):
        if value not in CONVENTIONS:
            raise ValueError(f"unknown conventions {value!r}; valid presets: {sorted(CONVENTIONS)}")
        return CONVENTIONS[value]
    if isinstance(value, Mapping):
        fields = {"name", "axcodes", "binary_values", "extra_final_evaluation"}
        if set(value) != fields:
            raise ValueError(f"conventions must have exactly the fields {sorted(fields)}, got {sorted(value)}")
        return ModelConventions(**value)
    raise ValueError(f"conventions must be a preset name {sorted(CONVENTIONS)} or their JSON object, got {value!r}")


def conventions_from_description(description: Mapping[str, Any]) -> ModelConventions:
    """The conventions a weights description records (``"conventions"``); descriptions written before they were
    recorded are this bundle's own weights (:data:`MEDSYN_MONAI`)."""
    return get_conventions(description.get("conventions"))


# --- the official MedSyn atlas grid ------------------------------------------------------------------------------
# The official preprocessing registers every CT to one atlas (preprocess/2_run_registration.py) and resamples it onto
# the atlas grid, whose shipped lung mask has this shape and affine (1 mm, LAS; read from
# preprocess/Patient_0111262324_..._Reg_mask.nii.gz), then resizes that grid to 256³ (preprocess/3_transform_image.py).
ATLAS_SHAPE = (316, 316, 292)
ATLAS_AFFINE = np.array(
    [
        [-1.0, 0.0, 0.0, 135.5],
        [0.0, 1.0, 0.0, -162.883056640625],
        [0.0, 0.0, 1.0, -321.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def resize_index_map(n_in: int, n_out: int) -> tuple[float, float]:
    """(scale, offset) of a resize that keeps the outer voxel edges (``skimage.transform.resize``): output voxel ``o``
    samples input coordinate ``scale * o + offset``."""
    scale = n_in / n_out
    return scale, 0.5 * scale - 0.5


def atlas_grid_spacing(size: int = DEFAULT_SIZE) -> tuple[float, float, float]:
    """Voxel size (x, y, z) in mm of the official model grid: the atlas field of view in ``size``³ (316/256 mm,
    316/256 mm, 292/256 mm at the official 256)."""
    return tuple(float(n) / size for n in ATLAS_SHAPE)


def atlas_grid_affine(size: int = DEFAULT_SIZE) -> np.ndarray:
    """The RAS affine of the official model grid (the atlas resized to ``size``³), for the RAS-ordered array: where
    official volumes lie in the atlas's world frame."""
    # the atlas file's voxel axes (i, j, k) run towards L, A, S: resize each, then reorder to RAS
    index_to_atlas = np.eye(4)
    for axis, n_in in enumerate(ATLAS_SHAPE):
        index_to_atlas[axis, axis], index_to_atlas[axis, 3] = resize_index_map(n_in, size)
    file_affine = ATLAS_AFFINE @ index_to_atlas  # (i, j, k) of the resized file → world
    # the RAS-ordered array flips i (L → R)
    flip_i = np.eye(4)
    flip_i[0, 0], flip_i[0, 3] = -1.0, size - 1.0
    return file_affine @ flip_i
