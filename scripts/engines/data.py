"""Training data for both diffusion stages: the default phantom dataset, the per-stage transforms, and the text
features looked up in the embedding cache.

Stage 1 (``lowres``) trains on the preprocessed volume's nearest ↓4 copy (``lowres``, 4 × size/4³) with the report's
token features as ``context``; stage 2 (``sr``) trains on random crops of the full-resolution ``image``. Everything
deterministic (loading, resampling, encoding) is cached by the dataset (``PersistentDataset`` under
``output_dir/cache``); random crops and the text lookup run every time, unless stage 1's whole set is held on the
GPU (:class:`DeviceCachedDataset`, ``cache_on_device``).

Example (what ``configs/train.json`` wires)::

    datalist = default_datalist("", "outputs/train")                  # generates the phantom on a fresh machine
    cache = fill_embedding_cache(ReportEncoder("minilm"), "outputs/text_cache", [datalist])
    transform = lowres_transforms(spacing=None, size=128, text_cache_dir="outputs/text_cache", text_key=cache.key)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import CenterSpatialCropd, Compose, DeleteItemsd, RandSpatialCropd

from scripts.conventions import LOWRES_FACTOR, ModelConventions, get_conventions
from scripts.data.datalist import IMAGE_KEY, REPORT_KEY, DataError, load_datalist
from scripts.data.transforms import LOWRES_KEY, LoadReportd, build_preprocessing
from scripts.text.cache import EmbeddingCache
from scripts.text.encoder import ReportEncoder

logger = logging.getLogger(__name__)

CONTEXT_KEY = "context"
PHANTOM_FOLDER = "phantom"


class ConfigError(ValueError):
    """A training configuration that cannot work; the message names the config id and the fix."""


def default_datalist(
    datalist: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    num: int = 8,
    size: int = 128,
    seed: int = 0,
) -> str:
    """The datalist to train on: ``datalist`` when given, otherwise a phantom dataset generated under ``output_dir``.

    The phantom goes to ``output_dir/phantom/n<num>_s<size>_seed<seed>/`` and is generated once: the whole folder is
    written under a temporary name and renamed, so a killed run or a second process (another rank) never sees a
    half-written dataset, and a rerun reuses it.

    Args:
        datalist: path of a datalist JSON file, or ``""``/None for the phantom.
        output_dir: the run's output folder.
        num, size, seed: phantom cases, edge length in voxels, dataset seed (``scripts.phantom.write_dataset``).

    Returns:
        the datalist path as a string.
    """
    if datalist:
        if not Path(datalist).is_file():
            raise ConfigError(
                f"config 'datalist': {datalist} not found; give an existing datalist JSON or '' for the "
                "built-in phantom"
            )
        return str(datalist)
    from scripts.phantom import write_dataset  # only needed for the default dataset

    target = Path(output_dir) / PHANTOM_FOLDER / f"n{num}_s{size}_seed{seed}"
    if (target / "datalist.json").is_file():
        return str(target / "datalist.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        logger.info(f"no datalist given: generating a {num}-case phantom dataset at {size}³ into {target}")
        write_dataset(staging, num=num, size=size, seed=seed, overwrite=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "datalist.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target / "datalist.json")


def load_split(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike | None,
    section: str,
    allow_missing_masks: bool = False,
) -> list[dict[str, Any]]:
    """One section of the datalist with resolved, checked paths; an empty section is a config error.

    Args:
        datalist: datalist JSON file.
        dataset_dir: root of relative paths; ``""``/None means the datalist's folder.
        section: ``training`` or ``validation``.
        allow_missing_masks: masks may be absent (their channels become background).
    """
    try:
        items = load_datalist(datalist, dataset_dir or None, section, allow_missing_masks=allow_missing_masks)
    except DataError as err:
        raise ConfigError(f"config 'datalist' / 'dataset_dir': {err}") from None
    if not items:
        raise ConfigError(f"config 'datalist': section '{section}' of {datalist} is empty; add at least one case")
    return items


def read_reports(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """The report texts of datalist items (``report`` text, else the ``report_file`` content)."""
    load = LoadReportd()
    return [load(dict(item))[REPORT_KEY] for item in items]


def fill_embedding_cache(
    encoder: ReportEncoder,
    cache_dir: str | os.PathLike,
    sections: Sequence[Iterable[Mapping[str, Any]]],
    batch_size: int = 16,
) -> EmbeddingCache:
    """Encode every report of the given datalist sections once, before training (misses only).

    Args:
        encoder: the configured text encoder.
        cache_dir: root folder of the embedding cache.
        sections: lists of datalist items (e.g. training and validation).
        batch_size: reports per encoder call.

    Returns:
        the cache; training reads it through :class:`AttachReportContext` with ``cache.key``.
    """
    cache = EmbeddingCache(cache_dir, encoder)
    reports = list(dict.fromkeys(text for items in sections for text in read_reports(items)))
    for start in range(0, len(reports), batch_size):
        cache.get(reports[start : start + batch_size])
    logger.info(f"text features of {len(reports)} reports in {cache.folder} ({cache.misses} newly encoded)")
    return cache


class AttachReportContext:
    """Put the cached token features of ``data["report"]`` under ``context`` (192, H), float32.

    Deliberately a plain callable, not a MONAI ``Transform``: caching datasets stop before it, so the cached volumes
    never hold text features and changing the text encoder never serves stale ones. The cache is opened read-only
    (no encoder): a report that was not encoded in ``initialize`` is an error, not a silent encoder load in a worker.

    Args:
        cache_dir: root folder of the embedding cache.
        key: the cache's folder name (``EmbeddingCache.key``).
        report_key: key of the report text.
        context_key: output key.
    """

    def __init__(
        self, cache_dir: str | os.PathLike, key: str, report_key: str = REPORT_KEY, context_key: str = CONTEXT_KEY
    ) -> None:
        self.cache_dir, self.key = str(cache_dir), key
        self.report_key, self.context_key = report_key, context_key
        self._cache: EmbeddingCache | None = None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir, key=self.key)
        d = dict(data)
        d[self.context_key] = self._cache.get(d[self.report_key])[0]
        return d

    def __getstate__(self) -> dict:  # DataLoader workers open their own read-only cache
        return {**self.__dict__, "_cache": None}


def _as_is(item: Any) -> Any:
    return item


class DeviceCachedDataset(torch.utils.data.Dataset):
    """Every item of a dataset whose items never change (stage 1: no random transform), computed once and kept on
    ``device``, so that training reads no file and copies nothing to the GPU (``cache_on_device`` in
    ``configs/train.json``; a loader over it must use ``num_workers=0``).

    The stage-1 set of 480 phantom cases at 64³ is 480 × 4 × 64³ float32 ≈ 2 GB. The items are computed through
    ``dataset`` (a ``PersistentDataset``: its disk cache is reused by a rerun) with ``num_workers`` processes.

    Args:
        dataset: the items, e.g. ``train#dataset``.
        device: where the tensors stay (``cuda``; ``cpu`` keeps them in host memory).
        num_workers: processes that compute the items the first time.
    """

    def __init__(self, dataset: Sequence[Any], device: torch.device | str, num_workers: int = 0) -> None:
        self.device = torch.device(device)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_as_is
        )
        self.items = [self._to_device(item) for item in loader]

    def _to_device(self, item: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in item.items()}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[Hashable, Any]:
        return self.items[index]


def _cache_name(stage: str, **settings: Any) -> str:
    """Folder name of a dataset cache: the stage and a digest of the preprocessing settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{stage}_{digest}"


def dataset_cache_dir(output_dir: str | os.PathLike, stage: str, section: str, **settings: Any) -> str:
    """``output_dir/cache/<stage>_<digest>/<section>``: one folder per preprocessing setting."""
    return str(Path(output_dir) / "cache" / _cache_name(stage, **settings) / section)


def lowres_transforms(
    spacing: Sequence[float] | None,
    size: int | Sequence[int],
    size_mode: str = "pad_crop",
    allow_missing_masks: bool = False,
    text_cache_dir: str | os.PathLike | None = None,
    text_key: str | None = None,
    conventions: str | ModelConventions | None = None,
) -> Compose:
    """Stage 1: preprocessing to ``size``, keep ``lowres`` (4, size/4...) only, then the report's ``context``.

    Args:
        spacing, size, size_mode, allow_missing_masks: as in :func:`scripts.data.transforms.build_preprocessing`.
        text_cache_dir, text_key: the embedding cache holding every report; None trains without text.
        conventions: the network side of the conventions (a preset name such as ``medsyn-monai``); default this
            bundle's.
    """
    steps = list(
        build_preprocessing(
            spacing,
            size,
            size_mode,
            lowres=True,
            allow_missing_masks=allow_missing_masks,
            conventions=get_conventions(conventions),
        ).transforms
    )
    steps.append(DeleteItemsd(IMAGE_KEY))  # the full-resolution volume is not needed: cache 1/64 of it
    if text_cache_dir is not None and text_key is not None:
        steps.append(AttachReportContext(text_cache_dir, text_key))
    return Compose(steps)


def check_crop(crop_size: Sequence[int], size: int | Sequence[int] | None = None) -> list[int]:
    """A super-resolution crop (D, H, W): multiples of ``LOWRES_FACTOR`` on every axis and of 8 in H and W, no
    larger than the volume.

    Raises:
        ConfigError: naming ``crop_size`` and the fix.
    """
    crop = [int(c) for c in crop_size]
    if len(crop) != 3 or min(crop) < 1:
        raise ConfigError(f"config 'crop_size': expected three positive sizes (D, H, W), got {list(crop_size)}")
    if any(c % LOWRES_FACTOR for c in crop) or crop[1] % 8 or crop[2] % 8:
        raise ConfigError(
            f"config 'crop_size': {crop} must be multiples of {LOWRES_FACTOR} on every axis and of 8 "
            "in H and W (e.g. [32, 64, 64])"
        )
    if size is not None:
        full = [int(size)] * 3 if isinstance(size, (int, float)) else [int(s) for s in size]
        if any(c > s for c, s in zip(crop, full)):
            raise ConfigError(f"config 'crop_size': {crop} is larger than the volume {full}; lower it or raise 'size'")
    return crop


def sr_transforms(
    spacing: Sequence[float] | None,
    size: int | Sequence[int],
    crop_size: Sequence[int],
    random_crop: bool = True,
    size_mode: str = "pad_crop",
    allow_missing_masks: bool = False,
    conventions: str | ModelConventions | None = None,
) -> Compose:
    """Stage 2: preprocessing to ``size`` (no low-res copy), then a (random or centre) crop of ``image``.

    Args:
        spacing, size, size_mode, allow_missing_masks: as in :func:`scripts.data.transforms.build_preprocessing`.
        crop_size: (D, H, W) in the network layout, checked by :func:`check_crop`.
        random_crop: random crops (training) or the centre crop (validation: comparable numbers).
        conventions: as in :func:`lowres_transforms`.
    """
    crop = check_crop(crop_size, size)
    steps = list(
        build_preprocessing(
            spacing,
            size,
            size_mode,
            lowres=False,
            allow_missing_masks=allow_missing_masks,
            conventions=get_conventions(conventions),
        ).transforms
    )
    if random_crop:
        steps.append(RandSpatialCropd(IMAGE_KEY, roi_size=crop, random_size=False))
    else:
        steps.append(CenterSpatialCropd(IMAGE_KEY, roi_size=crop))
    return Compose(steps)


__all__ = [
    "CONTEXT_KEY",
    "LOWRES_KEY",
    "AttachReportContext",
    "ConfigError",
    "check_crop",
    "dataset_cache_dir",
    "default_datalist",
    "fill_embedding_cache",
    "load_split",
    "lowres_transforms",
    "read_reports",
    "sr_transforms",
]
