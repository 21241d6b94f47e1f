"""The joint model as a segmentation network: a CT in, lobe / airway / vessel label scores out (MONAI Label entry).

Holding the CT channel fixed while the joint CT + anatomy model samples the other three channels segments the CT
(the ``--image`` path of the ``inference`` run). This module packages that as what MONAI bundle tools and MONAI
Label's ``monaibundle`` app expect of ``configs/inference.json``:

- :class:`JointSegmentationNetwork`: ``network_def``, one ``nn.Module`` holding both stages (state dict ``lowres.*``
  and ``sr.*``), forward ``(B, 1, D, H, W)`` encoded CT → ``(B, 8, D, H, W)`` one-hot scores of
  ``conventions.SEGMENTATION_LABELS``; the sampling itself is :class:`~scripts.inference.pipeline.MedSynPipeline`.
- :func:`build_segmentation_preprocessing`: ``preprocessing``, the inference chain of
  :func:`scripts.data.transforms.build_channel_preprocessing` plus the turn into the network layout.
- :func:`segmentation_datalist`: the CTs of a ``segment`` run, checked before any compute;
  :func:`check_segment_run` and :func:`run_evaluator`: the ``segment`` command's steps, failing in one line.
- :class:`AtomicNibabelWriter`: the writer ``SaveImaged`` uses, so label maps are written atomically.
- ``python -m scripts.inference.segmentation``: write ``models/model.pt`` from the two stages' weight files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import FolderLayout, MetaTensor, NibabelWriter
from monai.inferers import Inferer
from monai.transforms import Compose, Orientationd
from monai.utils import convert_to_dst_type
from torch import nn

from scripts.cli import ArgumentParser, exit_in_one_line, parse_bool, parse_number, parse_tile
from scripts.conventions import (
    AIRWAY,
    LOBE,
    LOWRES_FACTOR,
    MEDSYN_MONAI,
    NUM_SEGMENTATION_LABELS,
    VESSEL,
    ModelConventions,
    combine_labels,
)
from scripts.data.datalist import IMAGE_KEY
from scripts.data.dicom import is_dicom_series
from scripts.data.io import (
    OutputExistsError,
    atomic_path,
    check_output_folder,
    refuse_existing,
    remove_stale_temporaries,
)
from scripts.data.transforms import build_channel_preprocessing
from scripts.diffusion import ContinuousDDIMScheduler
from scripts.inference.cascade import WEIGHTS_HINT, describe_cascade, load_cascade
from scripts.inference.pipeline import MedSynPipeline
from scripts.networks.unet import MedSynUNet
from scripts.networks.weights import WeightsNotFoundError, load_state, state_difference

logger = logging.getLogger(__name__)

DEFAULT_LOWRES_WEIGHTS = "models/lowres_small.pt"
DEFAULT_SR_WEIGHTS = "models/sr_small.pt"
DEFAULT_EXPORT = "models/model.pt"
EXPORT_HINT = (
    "write it from the two stages' weights with `python -m scripts.inference.segmentation --lowres_weights "
    f"{DEFAULT_LOWRES_WEIGHTS} --sr_weights {DEFAULT_SR_WEIGHTS} --out {DEFAULT_EXPORT}` (docs/monai_label.md)"
)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class JointSegmentationNetwork(nn.Module):
    """Segment a CT with the joint model: sample lobe, airway and vessel channels with the CT channel held fixed.

    Both stages run with :class:`~scripts.inference.pipeline.MedSynPipeline` (no report: the learned null
    embedding), then the decoded lobe, airway and vessel maps are combined into one label map
    (``conventions.combine_labels``) and returned one-hot, for ``AsDiscreted(argmax=True)``. Every sample uses the
    same ``seed``, so a CT's labels do not depend on its batch. A forward runs the networks
    ``steps_lowres + steps_sr`` times per CT (MedSyn's 50 + 20).

    Args:
        lowres: stage-1 network (4 → 4 channels at ``size / LOWRES_FACTOR``).
        sr: stage-2 network (8 → 4 channels at ``size``).
        size: spatial size (D, H, W) of the input, the full model grid (an int for a cube).
        steps_lowres: DDIM steps of stage 1; default 50.
        steps_sr: DDIM steps of stage 2; default 20.
        seed: seed of the sampling noise; the same CT, seed, steps and weights give the same labels. Default 0.
        sr_tile: super-resolution tile (D, H, W), -1 = whole axis; None (default) runs the whole volume at once, as
            the official code does; "auto" the whole volume when the device has room, else slabs.
        sr_overlap: tile overlap fraction; default 0.25.
        progress: show progress bars; default True.
        conventions: the conventions both stages record (layout, mask decoding, the sampler's final evaluation).
    """

    _MASKS = (("lobe", LOBE), ("airway", AIRWAY), ("vessel", VESSEL))

    def __init__(
        self,
        lowres: nn.Module,
        sr: nn.Module,
        size: int | Sequence[int],
        steps_lowres: int = 50,
        steps_sr: int = 20,
        seed: int = 0,
        sr_tile: Sequence[int] | None = None,
        sr_overlap: float = 0.25,
        progress: bool = True,
        conventions: ModelConventions = MEDSYN_MONAI,
    ) -> None:
        super().__init__()
        size = (int(size),) * 3 if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        if len(size) != 3 or min(size) < 1 or any(s % LOWRES_FACTOR for s in size):
            raise ValueError(f"size must be three positive sizes divisible by {LOWRES_FACTOR}, got {list(size)}")
        self.lowres, self.sr = lowres, sr
        self.size = size
        self.steps_lowres = parse_number(steps_lowres, "steps_lowres", int, minimum=1)
        self.steps_sr = parse_number(steps_sr, "steps_sr", int, minimum=1)
        self.seed = parse_number(seed, "seed", int, minimum=0)
        tile = parse_tile(sr_tile)
        self.sr_tile = tile if tile in (None, "auto") else tuple(tile)
        self.sr_overlap = parse_number(sr_overlap, "sr_overlap", minimum=0.0, maximum=0.95)
        self.progress = progress
        self.conventions = conventions

    @classmethod
    def from_descriptions(
        cls,
        lowres_weights: str | os.PathLike,
        sr_weights: str | os.PathLike,
        load: bool = False,
        **settings: Any,
    ) -> JointSegmentationNetwork:
        """Build the network the two stages' weight files describe (``NAME.json`` beside each ``NAME.pt``).

        The architecture comes from each description's ``network``, the input size from the low-res one's model grid
        (``data``) and the conventions from both (:mod:`.cascade`). Without ``load`` the weights stay random: load
        ``models/model.pt`` with :meth:`load_weights` (or ``load_state_dict``, as MONAI Label does).

        Args:
            lowres_weights: stage-1 ``.pt`` file (its description must exist beside it).
            sr_weights: stage-2 ``.pt`` file.
            load: also load both stages' weights (strictly), as :func:`export_weights` does.
            settings: :class:`JointSegmentationNetwork` keyword arguments (steps, seed, tiling, progress).
        """
        if not lowres_weights:
            raise WeightsNotFoundError(f"segmentation needs lowres weights: {WEIGHTS_HINT}")
        if load:
            lowres, sr, described = load_cascade(lowres_weights, sr_weights, require_sr=True)
        else:
            described = describe_cascade(lowres_weights, sr_weights, require_sr=True)
            lowres, sr = MedSynUNet(**described.lowres["network"]), MedSynUNet(**described.sr["network"])
        network = cls(lowres, sr, described.grid.size, conventions=described.conventions, **settings)
        network.weights_folder = Path(lowres_weights).parent  # where a mismatched weights file is looked for by name
        return network

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load both stages' weights, strictly whatever ``strict`` says.

        MONAI Label's bundle task loads the weights file chosen in its model option with ``strict=False``, which
        would leave a network of random stage weights that returns nonsense labels with only a log warning. Here a
        state dict that does not fit both stages is an error naming what it is.

        Raises:
            WeightsMismatchError: missing or unexpected keys or other shapes; nothing is loaded.
        """
        difference = state_difference(self.state_dict(), state_dict)
        if difference:
            raise WeightsMismatchError(_mismatch_message(self, state_dict, difference))
        return super().load_state_dict(state_dict, strict=True, assign=assign)

    def load_weights(self, path: str | os.PathLike) -> JointSegmentationNetwork:
        """Load ``models/model.pt`` (a plain state dict of both stages) strictly and return this network."""
        return load_state(
            self,
            _require_file(path),
            "the networks described by the weights' JSON files",
            f"write it again ({EXPORT_HINT})",
        )

    def forward(
        self,
        image: torch.Tensor,
        steps_lowres: int | None = None,
        steps_sr: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """(B, 1, D, H, W) CT encoded to [-1, 1] on the model grid, network layout → (B, 8, D, H, W) one-hot labels.

        ``steps_lowres``, ``steps_sr`` and ``seed`` replace the network's own settings for this call (None keeps
        them): :class:`SegmentationInferer` passes a request's. The output has the input's type, dtype and device
        (and its metadata for a ``MetaTensor``).
        """
        steps_lowres = (
            self.steps_lowres if steps_lowres is None else parse_number(steps_lowres, "steps_lowres", int, minimum=1)
        )
        steps_sr = self.steps_sr if steps_sr is None else parse_number(steps_sr, "steps_sr", int, minimum=1)
        seed = self.seed if seed is None else parse_number(seed, "seed", int, minimum=0)
        if image.ndim != 5 or image.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, D, H, W) CT batch, got shape {tuple(image.shape)}")
        if tuple(image.shape[2:]) != self.size:
            raise ValueError(
                f"the CT has spatial shape {tuple(image.shape[2:])}, the model grid is {self.size} (D, H, W); "
                "put it on the grid with the bundle's `preprocessing` (build_segmentation_preprocessing)"
            )
        pipeline = MedSynPipeline(
            self.lowres,
            self.sr,
            lowres_size=[s // LOWRES_FACTOR for s in self.size],
            lowres_steps=steps_lowres,
            sr_steps=steps_sr,
            sr_roi_size=self.sr_tile,
            sr_overlap=self.sr_overlap,
            device=next(self.lowres.parameters()).device,
            progress=self.progress,
            scheduler=ContinuousDDIMScheduler.for_conventions(self.conventions),
        )
        ct = image.as_tensor() if isinstance(image, MetaTensor) else image  # the sampler needs no metadata
        scores = []
        for one in ct:
            volume = pipeline(None, seed, {"ct": one[0]}).volume
            lobe, airway, vessel = (self.conventions.decode(name, volume[i]) for name, i in self._MASKS)
            label = combine_labels(lobe, airway, vessel)
            scores.append(F.one_hot(label.long(), NUM_SEGMENTATION_LABELS).permute(3, 0, 1, 2))
        return convert_to_dst_type(torch.stack(scores), image, dtype=image.dtype)[0]

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script (MONAI's ckpt_export) calls this first: fail with the reason, not deep inside TorchScript
        raise TypeError(
            "the segmentation network cannot be exported to TorchScript: its forward is a diffusion sampler (a "
            "Python loop over DDIM steps with seeded noise, tiling and progress bars), not one graph; export the two "
            "denoisers it drives instead with configs/export.json (docs/export_and_packaging.md)"
        )


class WeightsMismatchError(ValueError):
    """A state dict that does not fit the segmentation network (both stages): the message says what it holds."""


def _mismatch_message(network: JointSegmentationNetwork, state: Mapping[str, Any], difference: str) -> str:
    """Why ``state`` does not fit, naming the file it came from when that is one of the ``*.pt`` files beside the
    weights (those MONAI Label's model option lists): one stage's weights alone, or keys and shapes that differ."""
    source = _file_holding(getattr(network, "weights_folder", None), state)
    given = f"the weights given ({source})" if source else "the weights given"
    stages = (("stage-1 (lowres)", network.lowres), ("stage-2 (sr)", network.sr))
    for stage, module in stages:
        if not state_difference(module.state_dict(), state):
            return (
                f"{given} are {stage} weights alone, not the segmentation network's {Path(DEFAULT_EXPORT).name}: "
                "choose model.pt (in MONAI Label, the model option)"
            )
    return f"{given} do not fit the segmentation network: {difference}; {EXPORT_HINT}"


def _file_holding(folder: Path | None, state: Mapping[str, Any]) -> Path | None:
    """The ``*.pt`` file of ``folder`` whose tensors are those of ``state`` (read only on this error path)."""
    if folder is None or not folder.is_dir() or not state:
        return None
    first = next(iter(state))
    for path in sorted(folder.glob("*.pt")):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any unreadable file is simply not the one
            continue
        if isinstance(saved, Mapping) and saved.keys() == state.keys() and torch.equal(saved[first], state[first]):
            return path
    return None


class SegmentationInferer(Inferer):
    """The segmentation entry's ``inferer``: runs the network with this request's sampling settings.

    MONAI Label builds ``network_def`` once per server but the inferer for every request, after applying the options a
    user set (the config's ``displayable_configs``): the steps and the seed must travel with the inferer to reach the
    network. The whole model grid goes through at once (stage 2 tiles itself with ``sr_tile``).

    Args:
        steps_lowres: DDIM steps of stage 1 (MedSyn: 50).
        steps_sr: DDIM steps of stage 2 (MedSyn: 20).
        seed: seed of the sampling noise.
    """

    def __init__(self, steps_lowres: int | str = 50, steps_sr: int | str = 20, seed: int | str = 0) -> None:
        super().__init__()
        self.steps_lowres = parse_number(steps_lowres, "steps_lowres", int, minimum=1)
        self.steps_sr = parse_number(steps_sr, "steps_sr", int, minimum=1)
        self.seed = parse_number(seed, "seed", int, minimum=0)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """(B, 1, D, H, W) preprocessed CT → (B, 8, D, H, W) one-hot label scores."""
        return network(inputs, *args, steps_lowres=self.steps_lowres, steps_sr=self.steps_sr, seed=self.seed, **kwargs)


def build_segmentation_preprocessing(
    lowres_weights: str | os.PathLike, spacing: Sequence[float] | None = None, size_mode: str | None = None
) -> Compose:
    """The ``preprocessing`` of the segmentation entry: a NIfTI CT path in ``image`` → (1, D, H, W) network input.

    The same chain that puts a fixed CT on the model grid for the ``inference`` run, so the network sees a CT exactly
    as in training (:func:`scripts.data.transforms.build_channel_preprocessing`: check the file, ``LoadImaged``
    channel first, check the voxels, ``Orientationd`` RAS, ``Spacingd`` bilinear, the HU window to [-1, 1] with
    clipping, ``ResizeWithPadOrCropd`` padding with the background or ``Resized``, or the official atlas resize),
    then ``Orientationd`` to the network layout of the weights' conventions. Every spatial step is invertible, for
    ``Invertd`` in the postprocessing.

    Args:
        lowres_weights: stage-1 weights; the model grid (spacing, size, size mode) and the conventions come from their
            description.
        spacing: voxel size in mm (x, y, z) instead of the training grid's (the config's ``spacing``).
        size_mode: how to put the CT on the grid instead of the recorded way (the config's ``size_mode``).
    """
    described = describe_cascade(lowres_weights, None, spacing, size_mode)
    grid = described.grid
    chain = build_channel_preprocessing(
        [IMAGE_KEY], grid.input_spacing, grid.size, grid.size_mode, described.conventions
    )
    # flat, so MONAI Label finds LoadImaged among the transforms (it swaps in its own loader)
    return Compose([*chain.transforms, Orientationd(IMAGE_KEY, axcodes=described.conventions.axcodes, labels=None)])


def segmentation_datalist(
    image: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    postfix: str = "seg",
    overwrite: bool | str = False,
) -> list[dict[str, str]]:
    """The CTs of a ``segment`` run as ``[{"image": path}, ...]``, checked before any compute.

    Args:
        image: one CT, a NIfTI file or a DICOM series folder (the config's ``image``).
        dataset_dir: a folder whose ``*.nii.gz`` / ``*.nii`` files (not its subfolders) are all CTs to segment.
        output_dir: where ``SaveImaged`` writes ``<name>_<postfix>.nii.gz``; with ``overwrite`` off, an existing
            output raises :class:`OutputExistsError` here, before any network runs. None skips the check.
        postfix: the label maps' file-name postfix (``SaveImaged``'s ``output_postfix``).
        overwrite: existing label maps may be replaced (bool, or "true"/"false" from the command line).
    """
    paths: list[Path] = []
    if image:
        if not (Path(image).is_file() or is_dicom_series(image)):
            raise FileNotFoundError(f"--image {image}: no such file or DICOM series folder")
        paths.append(Path(image))
    if dataset_dir:
        folder = Path(dataset_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"--dataset_dir {folder}: no such folder")
        paths += sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    paths = list(dict.fromkeys(p.resolve() for p in paths))
    if not paths:
        raise ValueError("nothing to segment: pass --image CT.nii.gz or --dataset_dir FOLDER (of NIfTI CTs)")
    if output_dir is not None:
        outputs = [_label_path(output_dir, postfix, p) for p in paths]
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"two inputs would write the same label map in {output_dir}; rename one of them")
        taken = [p.name for p in outputs if p.exists()]
        if not parse_bool(overwrite, "overwrite") and taken:
            raise OutputExistsError(
                f"{output_dir}: {', '.join(taken)} already exist; pass --overwrite true or another --output_dir"
            )
    return [{IMAGE_KEY: str(p)} for p in paths]


def _label_path(output_dir: str | os.PathLike, postfix: str, image: str | os.PathLike) -> Path:
    """Where ``SaveImaged`` (``separate_folder=False``) writes the label map of ``image``."""
    return Path(FolderLayout(output_dir, postfix=postfix, extension=".nii.gz").filename(subject=str(image)))


def check_segment_run(
    image: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    postfix: str = "seg",
    overwrite: bool | str = False,
    lowres_weights: str | os.PathLike | None = None,
    sr_weights: str | os.PathLike | None = None,
    segment_weights: str | os.PathLike | None = None,
) -> list[dict[str, str]]:
    """First step of the ``segment`` command, before anything is built: the inputs and outputs
    (:func:`segmentation_datalist`) and the three weight files. A failure exits with one line naming the problem.

    Args:
        image, dataset_dir, output_dir, postfix, overwrite: as in :func:`segmentation_datalist`.
        lowres_weights, sr_weights: the two stages' weights, whose descriptions give ``network_def``.
        segment_weights: ``models/model.pt``.
    """
    with exit_in_one_line("segment"):
        items = segmentation_datalist(image, dataset_dir, output_dir, postfix, overwrite)
        describe_cascade(lowres_weights or "", sr_weights, require_sr=True)
        _require_file(segment_weights)
        if output_dir is not None:
            check_output_folder(output_dir, "output_dir")
            for item in items:  # what an interrupted run of the same command left
                remove_stale_temporaries(output_dir, _label_path(output_dir, postfix, item[IMAGE_KEY]).name)
    return items


def run_evaluator(evaluator: Any) -> None:
    """Second step of the ``segment`` command: ``evaluator.run()``; a failure exits with one line naming its root
    cause (a bad case's :class:`~scripts.data.datalist.DataError` rather than MONAI's "applying transform")."""
    with exit_in_one_line("segment"):
        evaluator.run()


def _require_file(path: str | os.PathLike | None) -> Path:
    if not path or not Path(path).is_file():
        raise WeightsNotFoundError(f"no segmentation weights at {path}: {EXPORT_HINT}")
    return Path(path)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's NIfTI writer, writing through :func:`scripts.data.io.atomic_path`: under a temporary name, then
    renamed, so an interrupted run never leaves a partial label map. Whether a file may be replaced is decided
    before any compute (:func:`segmentation_datalist`)."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        with atomic_path(filename, overwrite=True) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


def export_weights(
    lowres_weights: str | os.PathLike,
    sr_weights: str | os.PathLike,
    out: str | os.PathLike = DEFAULT_EXPORT,
    overwrite: bool = False,
) -> Path:
    """Write both stages' weights as one plain state dict (``lowres.*``, ``sr.*``): the bundle's ``models/model.pt``.

    It loads into ``network_def`` with ``load_state_dict(strict=True)``, as MONAI Label does. Written atomically;
    an existing file is kept unless ``overwrite`` (checked before loading anything).

    Args:
        lowres_weights: stage-1 weights (``.pt`` beside its ``.json`` description).
        sr_weights: stage-2 weights.
        out: the file to write.
        overwrite: replace an existing ``out``.
    """
    out = Path(out)
    refuse_existing(out, overwrite, "pass --overwrite to replace it")
    network = JointSegmentationNetwork.from_descriptions(lowres_weights, sr_weights, load=True)
    state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    with atomic_path(out, overwrite=overwrite) as tmp:
        torch.save(state, tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m scripts.inference.segmentation",
        description="Write the segmentation entry's weights (models/model.pt) from the two stages' weight files.",
    )
    parser.add_argument("--lowres_weights", default=DEFAULT_LOWRES_WEIGHTS, help="stage-1 .pt (with its .json)")
    parser.add_argument("--sr_weights", default=DEFAULT_SR_WEIGHTS, help="stage-2 .pt (with its .json)")
    parser.add_argument("--out", default=DEFAULT_EXPORT, help="the state dict to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    with exit_in_one_line("segmentation export"):
        out = export_weights(args.lowres_weights, args.sr_weights, args.out, args.overwrite)
    print(f"wrote {out} (lowres {args.lowres_weights} + sr {args.sr_weights})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
