"""MONAI dictionary transforms that turn a datalist item into the networks' 4-channel tensors (docs/README.md, data conventions).

:func:`build_preprocessing` chains, for an item ``{"image", "lobe", "airway", "vessel", "report" | "report_file"}``
(paths already resolved by :func:`scripts.data.datalist.load_datalist`):

1. :class:`LoadReportd`: report text or file → ``report`` (str); empty → :class:`DataError`.
2. :class:`CheckFilesd`: keys, files and headers (3D, masks' shape and affine equal to the image's).
3. ``LoadImaged`` (nibabel, channel first, float32), then :class:`ValidateCased`: NaN/inf, label ranges.
4. :class:`ApplyRescaled`: CT-RATE stored values → HU (``rescale_slope``/``rescale_intercept``) and the voxel
   spacing from its metadata (``spacing``), when the item carries them.
5. ``Orientationd`` to RAS, ``Spacingd`` (image bilinear, masks nearest) or, for volumes on the official MedSyn
   atlas grid, :class:`AtlasResized` (the official resize to 256³); ``ScaleIntensityRanged`` on the HU window of
   :mod:`scripts.conventions` with clipping.
6. :class:`EncodeAnatomyd`: masks → network codes of the weights' conventions, missing masks (when allowed) →
   background, ``channel_mask``.
7. ``ResizeWithPadOrCropd`` (padding with each channel's background: air, no lobe, no mask) or ``Resized`` to
   ``size``.
8. ``ConcatItemsd`` → ``image`` (4, X, Y, Z) in channel order [CT, lobe, airway, vessel].
9. ``Orientationd`` to the network layout of the conventions (``ModelConventions.axcodes``; the affine follows).
10. :class:`Downsampled`: nearest ↓``LOWRES_FACTOR`` → ``lowres``; ``EnsureTyped`` float32.

Errors raised inside a MONAI ``Compose`` reach the caller as ``RuntimeError("applying transform ...")`` whose
cause is the :class:`DataError` naming the case, the file and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureTyped,
    InvertibleTransform,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
)
from monai.transforms import Spacingd as MonaiSpacingd
from monai.utils import TraceKeys

from scripts.conventions import (
    ATLAS_SHAPE,
    DEFAULT_SIZE,
    HU_MAX,
    HU_MIN,
    LOWRES_FACTOR,
    MASK_KEYS,
    MEDSYN_MONAI,
    NUM_CHANNELS,
    ModelConventions,
    resize_index_map,
)
from scripts.data.datalist import IMAGE_KEY, REPORT_FILE_KEY, REPORT_KEY, DataError, Problem, case_id, check_item
from scripts.data.dicom import DicomSeriesReader
from scripts.data.validation import AFFINE_ATOL, header_problems, read_headers, voxel_problems

CHANNEL_MASK_KEY = "channel_mask"
LOWRES_KEY = "lowres"
SIZE_MODES = ("pad_crop", "resize", "atlas")
ATLAS_HINT = (
    "register it to the MedSyn atlas first (official preprocessing steps 1-2, docs/official_weights.md), or pass "
    "--size_mode pad_crop to centre it on the model grid without registration"
)


def _raise(problems: Sequence[Problem]) -> None:
    if problems:
        raise DataError("; ".join(str(p) for p in problems))


def _name(data: Mapping[Hashable, Any]) -> str:
    return case_id(dict(data))


class LoadReportd(MapTransform):
    """Put the report text in ``key``: the item's text, else the content of its ``report_file``.

    Args:
        key: key of the report text (output key too).
        file_key: key of a report file path, read as UTF-8 when the text is absent or empty.
        required: an absent or empty report raises :class:`DataError` naming the case; when False it becomes "".
    """

    def __init__(self, key: str = REPORT_KEY, file_key: str = REPORT_FILE_KEY, required: bool = True) -> None:
        super().__init__(keys=key, allow_missing_keys=True)
        self.key, self.file_key, self.required = key, file_key, required

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name = _name(d)
        text = d.get(self.key)
        if not (isinstance(text, str) and text.strip()) and d.get(self.file_key):
            path = Path(d[self.file_key])
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"case {name}: {path}: cannot read report file ({type(err).__name__}: {err})") from None
            if self.required and not text.strip():
                raise DataError(f"case {name}: {path}: report file is empty; write the report text into it")
        if not isinstance(text, str) or not text.strip():
            if self.required:
                raise DataError(f"case {name}: report is empty; add '{self.key}' text or a '{self.file_key}' path")
            text = ""
        d[self.key] = text.strip()
        return d


class CheckFilesd(MapTransform):
    """Check a case before loading it: required keys, files present and readable, one 3D volume each, masks
    with the image's shape and affine. Reads headers only.

    Args:
        keys: volume keys, the image first (default ``image``, ``lobe``, ``airway``, ``vessel``).
        allow_missing_masks: masks may be absent (text-only training); otherwise a missing mask raises.
        affine_atol: largest mask/image affine difference in mm.
        require_image: the CT must be there (False: masks alone, for anatomy-controlled inference).

    Raises:
        DataError: naming the case and every bad file of it.
    """

    def __init__(
        self,
        keys: KeysCollection = (IMAGE_KEY, *MASK_KEYS),
        allow_missing_masks: bool = False,
        affine_atol: float = AFFINE_ATOL,
        require_image: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.allow_missing_masks, self.affine_atol = allow_missing_masks, affine_atol
        self.require_image = require_image

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name = _name(d)
        item = {k: d[k] for k in self.keys if k in d}
        problems = check_item(
            item, name, self.allow_missing_masks, check_files=True, check_report=False, require_image=self.require_image
        )
        headers, unreadable = read_headers(name, item, self.keys)
        _raise(problems + unreadable + header_problems(name, headers, self.affine_atol))
        return d


class Spacingd(MonaiSpacingd):
    """MONAI's ``Spacingd``, for items that hold other ``<key>_*`` entries than metadata dictionaries.

    Since MONAI 1.6, ``Spacingd`` writes the resampled metadata into every entry whose name starts with ``<key>_``,
    which fails on a string: MONAI Label puts ``image_path`` (the study's file) in every item it sends. Such entries
    are set aside while resampling and put back unchanged; metadata dictionaries (``image_meta_dict``) are updated
    as MONAI does.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: v for k, v in data.items() if isinstance(k, str) and k.startswith(prefixes) and not isinstance(v, dict)
        }
        resampled = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        resampled.update(aside)
        return resampled


class ValidateCased(MapTransform):
    """Check loaded voxels: no NaN/inf anywhere; masks hold integer labels in range (lobe 0..5, others 0..1).

    Args:
        keys: loaded volume keys (channel-first arrays or tensors); the mask ones are checked for labels.

    Raises:
        DataError: naming the case, the file and the problem.
    """

    def __init__(self, keys: KeysCollection = (IMAGE_KEY, *MASK_KEYS)) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name = _name(d)
        problems: list[Problem] = []
        for key in self.key_iterator(d):
            value = d[key]
            path = value.meta.get("filename_or_obj", key) if isinstance(value, MetaTensor) else key
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            problems += voxel_problems(name, str(key), str(path), array)
        _raise(problems)
        return d


class ApplyRescaled(MapTransform):
    """Stored values → HU with the item's slope and intercept, and the item's voxel spacing into the affines.

    CT-RATE volumes store raw values (HU = stored · RescaleSlope + RescaleIntercept) and some headers carry a
    wrong spacing; :mod:`scripts.data.ctrate` writes the metadata's values into each item. Items without those keys
    pass unchanged. Run it before any resampling: the spacing is per array axis (x, y, z) of the file.

    Args:
        keys: volume keys whose affine gets the spacing (image and masks); the image must be first.
        slope_key, intercept_key: item keys of the rescale numbers, applied to the first key only.
        spacing_key: item key of the spacing [sx, sy, sz] in mm; the affine's directions and origin are kept.
    """

    def __init__(
        self,
        keys: KeysCollection = (IMAGE_KEY, *MASK_KEYS),
        slope_key: str = "rescale_slope",
        intercept_key: str = "rescale_intercept",
        spacing_key: str = "spacing",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.slope_key, self.intercept_key, self.spacing_key = slope_key, intercept_key, spacing_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        name, image_key = _name(d), self.keys[0]
        if self.slope_key in d or self.intercept_key in d:
            slope, intercept = d.get(self.slope_key, 1.0), d.get(self.intercept_key, 0.0)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (slope, intercept)) or slope == 0:
                raise DataError(f"case {name}: bad rescale slope/intercept {slope!r}/{intercept!r}; fix the datalist")
            d[image_key] = d[image_key] * float(slope) + float(intercept)
        if d.get(self.spacing_key) is not None:
            spacing = np.asarray(d[self.spacing_key], dtype=np.float64)
            if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
                raise DataError(f"case {name}: bad spacing {d[self.spacing_key]!r}; expected three positive mm values")
            for key in self.key_iterator(d):
                affine = np.array(d[key].affine, dtype=np.float64)
                directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
                affine[:3, :3] = directions * spacing
                d[key].affine = torch.as_tensor(affine)
        return d


class EncodeAnatomyd(MapTransform):
    """Masks → network codes of the weights' conventions (lobe ``label / 5 · 2 - 1``; airway and vessel ±1 for this
    bundle's weights, {0, 1} for the official ones).

    With ``allow_missing_masks`` an absent mask becomes background (the channel's background value everywhere, the
    image's shape and affine). Always writes ``channel_mask``: a (4,) float32 tensor, 1 for the channels [CT, lobe, airway, vessel]
    that hold real data, so a loss can ignore the others.

    Args:
        keys: mask keys; each must be a channel name of the conventions (``lobe``, ``airway``, ``vessel``).
        image_key: the CT, used for the shape of missing masks.
        allow_missing_masks: fill absent masks instead of raising.
        channel_mask_key: output key of the channel mask.
        conventions: the network side of the conventions (the encoding of airway and vessel); default this bundle's.
    """

    def __init__(
        self,
        keys: KeysCollection = MASK_KEYS,
        image_key: str = IMAGE_KEY,
        allow_missing_masks: bool = False,
        channel_mask_key: str = CHANNEL_MASK_KEY,
        conventions: ModelConventions = MEDSYN_MONAI,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        unknown = [k for k in self.keys if k not in MASK_KEYS]
        if unknown:
            raise ValueError(f"EncodeAnatomyd keys must be mask channels {MASK_KEYS}, got {unknown}")
        self.image_key, self.channel_mask_key = image_key, channel_mask_key
        self.allow_missing_masks = allow_missing_masks
        self.conventions = conventions

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = torch.ones(NUM_CHANNELS, dtype=torch.float32)
        for index, key in enumerate(self.keys, start=1):
            if key in d:
                d[key] = self.conventions.encode(str(key), d[key])
            elif self.allow_missing_masks:
                d[key] = torch.full_like(d[self.image_key], self.conventions.value_range(str(key))[0])
                present[index] = 0.0
            else:
                raise DataError(f"case {_name(d)}: no '{key}' mask; add it to the item or allow missing masks")
        d[self.channel_mask_key] = present
        return d


class AtlasResized(MapTransform, InvertibleTransform):
    """Volumes on the official MedSyn atlas grid → the official model grid, exactly as the official preprocessing
    resizes them (``preprocess/3_transform_image.py`` for CTs, ``5_transform_lung_mask.py`` for masks).

    The atlas grid is 316 × 316 × 292 voxels of 1 mm (:data:`scripts.conventions.ATLAS_SHAPE`), what the official
    registration (steps 1-2) produces. Each channel is resized to ``size``³ with ``skimage.transform.resize``, keeping
    the outer voxel edges: the CT linearly after a Gaussian anti-aliasing filter with ``cval`` -1024 HU at the
    border, masks by nearest neighbour with 0 at the border (the official arguments). Run it on HU, before the
    window, as the official code does. The affine follows; ``inverse`` resizes back by nearest neighbour (label maps
    of the segmentation entry).

    Args:
        keys: RAS volumes (C, X, Y, Z) on the atlas grid; the image key is the CT, the others masks.
        size: the model grid size (official: 256).
        image_key: the CT key.

    Raises:
        DataError: a volume not on the atlas grid (naming its shape and spacing and the fix).
    """

    def __init__(self, keys: KeysCollection, size: int = 256, image_key: str = IMAGE_KEY) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.size, self.image_key = int(size), image_key

    def _check(self, name: str, key: Hashable, x: MetaTensor) -> None:
        spacing = np.linalg.norm(np.asarray(x.affine, dtype=np.float64)[:3, :3], axis=0)
        if tuple(x.shape[1:]) != ATLAS_SHAPE or not np.allclose(spacing, 1.0, atol=1e-3):
            raise DataError(
                f"case {name}: {key} is {list(x.shape[1:])} voxels of {np.round(spacing, 3).tolist()} mm, not on the "
                f"MedSyn atlas grid ({list(ATLAS_SHAPE)} voxels of 1 mm); {ATLAS_HINT}"
            )

    @staticmethod
    def _resize(x: MetaTensor, shape: Sequence[int], image: bool) -> MetaTensor:
        from skimage.transform import resize

        array = x.detach().cpu().numpy().astype(np.float64)  # the official code resizes in float64
        options = (
            dict(order=1, cval=HU_MIN, anti_aliasing=True) if image else dict(order=0, cval=0, anti_aliasing=False)
        )
        out = np.stack(
            [resize(c, tuple(shape), mode="constant", preserve_range=True, **options) for c in array]
        ).astype(np.float32)
        index_map = np.eye(4)
        for axis, (n_in, n_out) in enumerate(zip(x.shape[1:], shape)):
            index_map[axis, axis], index_map[axis, 3] = resize_index_map(n_in, n_out)
        meta = dict(x.meta)
        meta["affine"] = torch.as_tensor(np.asarray(x.affine, dtype=np.float64) @ index_map)
        meta["spatial_shape"] = np.asarray(shape)
        return MetaTensor(torch.from_numpy(out), meta=meta, applied_operations=list(x.applied_operations))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self._check(_name(d), key, d[key])
        for key in self.key_iterator(d):
            x = d[key]
            out = self._resize(x, (self.size,) * 3, key == self.image_key)
            self.push_transform(out, orig_size=list(x.shape[1:]), extra_info={"affine": x.affine})
            d[key] = out
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            transform = self.pop_transform(d[key])
            restored = self._resize(d[key], transform[TraceKeys.ORIG_SIZE], image=False)
            restored.affine = transform[TraceKeys.EXTRA_INFO]["affine"]
            d[key] = restored
        return d


class Downsampled(MapTransform):
    """Nearest-neighbour downsampling by striding: ``x[:, ::f, ::f, ::f]`` (256³ → 64³).

    The kept voxels are 0, f, 2f, ... so the first voxel's centre does not move and the affine's spacing is
    multiplied by f.

    Args:
        keys: channel-first volumes (C, D, H, W).
        factor: the stride, default ``conventions.LOWRES_FACTOR``.
        names: output keys, one per key; None writes in place.
    """

    def __init__(
        self,
        keys: KeysCollection,
        factor: int = LOWRES_FACTOR,
        names: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)
        self.names = self.keys if names is None else ((names,) if isinstance(names, str) else tuple(names))
        if len(self.names) != len(self.keys):
            raise ValueError(f"Downsampled needs one name per key, got keys {self.keys} and names {self.names}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        f = self.factor
        for key, name in self.key_iterator(d, self.names):
            x = d[key]
            small = x[:, ::f, ::f, ::f]
            if isinstance(x, MetaTensor):
                scale = torch.diag(torch.tensor([f, f, f, 1.0], dtype=torch.float64))
                meta = dict(x.meta)
                meta["affine"] = x.affine.to(torch.float64) @ scale
                meta["spatial_shape"] = np.asarray(small.shape[1:])
                small = MetaTensor(small.as_tensor().clone(), meta=meta)
            else:
                small = small.clone() if isinstance(small, torch.Tensor) else small.copy()
            d[name] = small
        return d


def build_preprocessing(
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    size: int | Sequence[int] | None = DEFAULT_SIZE,
    size_mode: str = "pad_crop",
    lowres: bool = True,
    allow_missing_masks: bool = False,
    network_layout: bool = True,
    report_required: bool = True,
    affine_atol: float = AFFINE_ATOL,
    conventions: ModelConventions = MEDSYN_MONAI,
) -> Compose:
    """The preprocessing chain from a datalist item to ``image`` (4, *size) and ``lowres`` (4, *size / 4).

    Args:
        spacing: target voxel spacing (x, y, z) in mm after orienting to RAS; None keeps the file's grid.
        size: spatial size after resampling (one int for a cube); None keeps the resampled size.
        size_mode: ``pad_crop`` (centre pad with each channel's background / crop; keeps the spacing), ``resize``
            (interpolate the whole volume to ``size``: CT trilinear, masks nearest; changes the spacing) or
            ``atlas`` (volumes already on the official MedSyn atlas grid, resized as the official preprocessing does
            with :class:`AtlasResized`; ``spacing`` must be None).
        lowres: add ``lowres``: ``image`` downsampled by ``conventions.LOWRES_FACTOR`` (nearest, striding).
        allow_missing_masks: text-only data: absent masks become background and ``channel_mask`` marks them.
        network_layout: end in the network's axis layout ``conventions.axcodes`` (D, H, W); False keeps RAS.
        report_required: an absent or empty report raises (training); False makes it "".
        affine_atol: largest mask/image affine difference in mm.
        conventions: the network side of the conventions of the weights being trained or used (axis layout,
            airway / vessel encoding); default this bundle's.

    Returns:
        a ``Compose`` mapping an item to a dict with ``image`` (MetaTensor float32 (4, ...), values in [-1, 1]),
        ``lowres`` (when asked), ``channel_mask`` (4,), ``report`` (str) and the item's other keys.
    """
    spatial = _check_grid(spacing, size, size_mode)
    if lowres and spatial is not None and any(s % LOWRES_FACTOR for s in spatial):
        raise ValueError(f"size {spatial} must be divisible by the low-resolution factor {LOWRES_FACTOR}")
    keys = [IMAGE_KEY, *MASK_KEYS]
    transforms: list[Any] = [
        LoadReportd(required=report_required),
        CheckFilesd(keys, allow_missing_masks=allow_missing_masks, affine_atol=affine_atol),
        _loader(keys),
        ValidateCased(keys),
        ApplyRescaled(keys),
        *_model_grid(keys, spacing, spatial, size_mode),
        ScaleIntensityRanged(IMAGE_KEY, a_min=HU_MIN, a_max=HU_MAX, b_min=-1.0, b_max=1.0, clip=True),
        EncodeAnatomyd(MASK_KEYS, allow_missing_masks=allow_missing_masks, conventions=conventions),
        *_fit_size(keys, spatial, size_mode, conventions),
    ]
    transforms += [ConcatItemsd(keys, name=IMAGE_KEY, dim=0), DeleteItemsd(list(MASK_KEYS))]
    if network_layout:
        transforms.append(Orientationd(IMAGE_KEY, axcodes=conventions.axcodes, labels=None))
    out_keys = [IMAGE_KEY]
    if lowres:
        transforms.append(Downsampled(IMAGE_KEY, factor=LOWRES_FACTOR, names=LOWRES_KEY))
        out_keys.append(LOWRES_KEY)
    transforms.append(EnsureTyped(out_keys, dtype=torch.float32, track_meta=True))
    return Compose(transforms)


def _check_grid(spacing: Sequence[float] | None, size: int | Sequence[int] | None, size_mode: str) -> list[int] | None:
    """Validate the model-grid arguments; returns the spatial size as three ints (or None)."""
    if size_mode not in SIZE_MODES:
        raise ValueError(f"size_mode must be one of {SIZE_MODES}, got {size_mode!r}")
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ValueError(f"spacing must be three positive mm values or None, got {spacing!r}")
    spatial = None if size is None else ([int(size)] * 3 if isinstance(size, (int, float)) else [int(s) for s in size])
    if spatial is not None and (len(spatial) != 3 or min(spatial) < 1):
        raise ValueError(f"size must be a positive int or three of them, got {size!r}")
    if size_mode == "atlas" and (spacing is not None or spatial is None or len(set(spatial)) != 1):
        raise ValueError(
            f"size_mode 'atlas' resizes the atlas grid to a cube as the official code does: it needs spacing None "
            f"and one size, got spacing {spacing!r} and size {size!r}"
        )
    return spatial


def _modes(keys: Sequence[str], image_mode: str) -> list[str]:
    # CT is interpolated, label maps never are
    return [image_mode if key == IMAGE_KEY else "nearest" for key in keys]


def _loader(keys: Sequence[str]) -> LoadImaged:
    # LoadImage tries the given readers last one first: NIfTI files go to nibabel, DICOM series folders to pydicom
    return LoadImaged(
        keys,
        reader=[DicomSeriesReader(), "NibabelReader"],
        image_only=True,
        ensure_channel_first=True,
        dtype=np.float32,
        allow_missing_keys=True,
    )


def _model_grid(
    keys: Sequence[str], spacing: Sequence[float] | None, spatial: list[int] | None, size_mode: str
) -> list[Any]:
    """RAS orientation, then resampling to ``spacing`` (CT bilinear, masks nearest), or from the atlas grid to the
    model grid in ``atlas`` mode (on HU, before the window, as the official preprocessing does)."""
    transforms: list[Any] = [Orientationd(keys, axcodes="RAS", allow_missing_keys=True, labels=None)]
    if size_mode == "atlas":
        transforms.append(AtlasResized(keys, size=spatial[0]))
    elif spacing is not None:
        transforms.append(
            Spacingd(
                keys, pixdim=list(spacing), mode=_modes(keys, "bilinear"), dtype=np.float32, allow_missing_keys=True
            )
        )
    return transforms


def _fit_size(
    keys: Sequence[str], spatial: list[int] | None, size_mode: str, conventions: ModelConventions
) -> list[Any]:
    """Centre pad (with each channel's background: air, no lobe, no mask) / crop, or resize, to the model grid's
    ``spatial`` size; nothing in ``atlas`` mode (already done on the atlas grid)."""
    if spatial is None or size_mode == "atlas":
        return []
    if size_mode == "pad_crop":
        return [
            ResizeWithPadOrCropd(
                key,
                spatial_size=spatial,
                mode="constant",
                value=conventions.value_range("ct" if key == IMAGE_KEY else key)[0],
                allow_missing_keys=True,
            )
            for key in keys
        ]
    return [Resized(keys, spatial_size=spatial, mode=_modes(keys, "trilinear"), allow_missing_keys=True)]


def build_channel_preprocessing(
    channels: Sequence[str],
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    size: int | Sequence[int] | None = DEFAULT_SIZE,
    size_mode: str = "pad_crop",
    conventions: ModelConventions = MEDSYN_MONAI,
) -> Compose:
    """Put any subset of the four channels, given as files, on the model grid (for anatomy-controlled inference).

    The item maps ``image`` (the CT) and the mask names (``lobe``, ``airway``, ``vessel``) to NIfTI paths, the keys
    of a datalist item. Each is read, checked
    (NaN, label ranges), oriented to RAS, resampled (CT bilinear, masks nearest), encoded to [-1, 1] and padded /
    cropped or resized exactly as :func:`build_preprocessing` does for training, so a fixed channel matches what
    the model saw. Output: each key as a (1, X, Y, Z) RAS MetaTensor whose affine is the model grid's.

    Args:
        channels: the keys present in the items (``image`` and / or mask names).
        spacing, size, size_mode: the model grid, as in :func:`build_preprocessing` (use the training values).
        conventions: the network side of the conventions of the weights (the encoding of airway and vessel).
    """
    keys = list(channels)
    if not keys or any(k not in (IMAGE_KEY, *MASK_KEYS) for k in keys):
        raise ValueError(f"channels must be a non-empty subset of {(IMAGE_KEY, *MASK_KEYS)}, got {keys}")
    spatial = _check_grid(spacing, size, size_mode)
    masks = [k for k in keys if k in MASK_KEYS]
    transforms: list[Any] = [
        CheckFilesd(keys, allow_missing_masks=True, require_image=IMAGE_KEY in keys),
        _loader(keys),
        ValidateCased(keys),
        *_model_grid(keys, spacing, spatial, size_mode),
    ]
    if IMAGE_KEY in keys:
        transforms.append(ScaleIntensityRanged(IMAGE_KEY, a_min=HU_MIN, a_max=HU_MAX, b_min=-1.0, b_max=1.0, clip=True))
    if masks:
        transforms.append(EncodeAnatomyd(masks, image_key=IMAGE_KEY, conventions=conventions))
    transforms += [
        *_fit_size(keys, spatial, size_mode, conventions),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ]
    return Compose(transforms)
