"""The ``inference`` and ``synthesize`` runs of ``configs/inference.json``.

:class:`InferenceRunner` loads the weights (with an error that says where to get missing ones), builds the
:class:`~scripts.inference.pipeline.MedSynPipeline`, puts fixed anatomy or CT inputs on the model grid, and writes
every sample with :class:`~scripts.inference.writer.SampleWriter`. :meth:`InferenceRunner.run` is the command-line
face: any failure ends the process with one line naming the problem, after the samples already finished were kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.conventions import LOWRES_FACTOR, SEGMENTATION_LABELS, combine_labels
from scripts.data.io import write_json, write_nifti, write_text
from scripts.data.transforms import build_channel_preprocessing
from scripts.diffusion import ContinuousDDIMScheduler
from scripts.inference.cascade import load_cascade
from scripts.inference.pipeline import MedSynPipeline
from scripts.inference.prompts import Prompt, read_prompts
from scripts.inference.writer import SYNTHETIC_DESCRIPTION, SampleWriter

logger = logging.getLogger(__name__)

FIXED_INPUTS = {"image": "ct", "lobe": "lobe", "airway": "airway", "vessel": "vessel"}  # CLI key → channel


@contextmanager
def exit_in_one_line(command: str) -> Iterator[None]:
    """For the command line: any failure inside ends the process with ``medsyn <command> failed: <Type>: <message>``
    instead of a traceback. An error MONAI wrapped while applying a transform ("applying transform <...>") is
    reported by its cause, which names the case and the fix."""
    try:
        yield
    except Exception as err:
        while err.__cause__ is not None and str(err).startswith("applying transform"):
            err = err.__cause__
        raise SystemExit(f"medsyn {command} failed: {type(err).__name__}: {err}") from None


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _as_tile(value: Any) -> list[int] | str | None:
    """``--sr_tile``: a (D, H, W) list, None / "null" / "none" (the command line gives strings) for the whole volume,
    or "auto" (the whole volume when the device has room, else slabs)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) or len(value) != 3:
        raise ValueError(f"--sr_tile must be three sizes [D, H, W] (-1 = whole axis), null or auto, got {value!r}")
    return [int(v) for v in value]


class InferenceRunner:
    """Generate samples from reports, optionally holding anatomy or the CT fixed, and write them.

    Args:
        lowres_weights: stage-1 weights (``.pt`` with its ``.json`` description, see :mod:`.weights`).
        sr_weights: stage-2 weights, or None/"" to write the 64³ stage-1 output only.
        output_dir: where samples are written.
        text_encoder: encoder name or folder (None: the one the low-res weights were trained with), or a loaded
            :class:`~scripts.text.ReportEncoder` to share between runners. Official weights need the official
            language-model folder.
        guidance_scale: classifier-free guidance (1 = off).
        steps_lowres, steps_sr: DDIM steps per stage (network evaluations: one more each for official weights).
        spacing: model-grid voxel size in mm; None takes the training grid from the weights' description.
        sr_tile: super-resolution tile (D, H, W), -1 = whole axis; None runs the whole volume at once; "auto" the
            whole volume when the device has room, else slabs (the sidecar records which).
        sr_overlap: tile overlap fraction.
        device: torch device (default CUDA when available).
        overwrite: replace existing sample files.
        progress: progress bars.
        size_mode: how fixed inputs are put on the model grid instead of the recorded way (``pad_crop``, ``resize``,
            ``atlas``).
        text_encoder_base: config and tokenizer of the official language model (default: the base the weights
            record, CXR-BERT, from the local Hugging Face cache).
    """

    def __init__(
        self,
        lowres_weights: str | os.PathLike,
        sr_weights: str | os.PathLike | None,
        output_dir: str | os.PathLike,
        text_encoder: str | Any | None = None,
        guidance_scale: float = 1.0,
        steps_lowres: int = 50,
        steps_sr: int = 20,
        spacing: Sequence[float] | None = None,
        sr_tile: Sequence[int] | None = None,
        sr_overlap: float = 0.25,
        device: str | torch.device | None = None,
        overwrite: bool | str = False,
        progress: bool = True,
        size_mode: str | None = None,
        text_encoder_base: str | None = None,
    ) -> None:
        # nothing is loaded here: the command line reports loading problems in one line (see run)
        self.lowres_weights, self.sr_weights = lowres_weights, sr_weights or None
        self.output_dir = output_dir
        self.text_encoder = text_encoder if isinstance(text_encoder, (str, type(None))) else None
        self._text_encoder = None if self.text_encoder is not None or text_encoder is None else text_encoder
        self.guidance_scale, self.steps_lowres, self.steps_sr = float(guidance_scale), int(steps_lowres), int(steps_sr)
        self.spacing_override = spacing
        self.sr_tile, self.sr_overlap = _as_tile(sr_tile), float(sr_overlap)
        self.device = torch.device(device) if device is not None else None
        self.overwrite = _as_bool(overwrite)
        self.progress = progress
        self.size_mode_override = size_mode or None
        self.text_encoder_base = text_encoder_base or None
        self._pipeline: MedSynPipeline | None = None

    def _load(self) -> None:
        """Load both networks; the model grid and conventions come from their descriptions (:mod:`.cascade`)."""
        lowres, sr, described = load_cascade(
            self.lowres_weights, self.sr_weights, self.device or "cpu", self.spacing_override, self.size_mode_override
        )
        self.lowres_info, self.sr_info = described.lowres, described.sr or {}
        self.conventions, self.grid = described.conventions, described.grid
        self.weights = {"lowres": str(self.lowres_weights), "sr": str(self.sr_weights) if sr is not None else None}
        loaded = getattr(self._text_encoder, "model_id", None)
        self.text_encoder_name = self.text_encoder or loaded or self.lowres_info.get("text_encoder", "minilm")
        self.context_dim = self.lowres_info["network"].get("context_dim")
        self._pipeline = MedSynPipeline(
            lowres,
            sr,
            text_encoder=self._encode,
            lowres_size=(self.grid.size // LOWRES_FACTOR,) * 3,
            lowres_steps=self.steps_lowres,
            sr_steps=self.steps_sr,
            guidance_scale=self.guidance_scale,
            sr_roi_size=self.sr_tile,
            sr_overlap=self.sr_overlap,
            device=self.device,
            progress=self.progress,
            scheduler=ContinuousDDIMScheduler.for_conventions(self.conventions),
        )
        self.settings = {
            "guidance_scale": self.guidance_scale,
            "steps_lowres": self.steps_lowres,
            "steps_sr": self.steps_sr if sr is not None else None,
        }
        self._writer = SampleWriter(self.output_dir, self.conventions, overwrite=self.overwrite)

    def _ensure_loaded(self) -> None:
        if self._pipeline is None:
            self._load()

    @property
    def pipeline(self) -> MedSynPipeline:
        """The loaded pipeline (the weights are loaded on first use)."""
        self._ensure_loaded()
        return self._pipeline

    @property
    def writer(self) -> SampleWriter:
        """The sample writer (its grid spacing comes from the weights, so they are loaded first)."""
        self._ensure_loaded()
        return self._writer

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        if self._text_encoder is None:
            from scripts.text import ReportEncoder  # loading transformers only when a report is given

            self._text_encoder = ReportEncoder.for_weights(
                self.text_encoder_name,
                self.lowres_info.get("text_encoder_info"),
                self.pipeline.device,
                self.text_encoder_base,
            )
        if self._text_encoder.hidden_size != self.context_dim:
            raise ValueError(
                f"text encoder {self.text_encoder_name!r} gives {self._text_encoder.hidden_size}-wide features, "
                f"the low-res network expects {self.context_dim}; use the encoder it was trained with"
            )
        return self._text_encoder.encode(list(texts))

    def load_fixed(self, inputs: dict[str, str | None]) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
        """Put the given inputs (``image``, ``lobe``, ``airway``, ``vessel`` → NIfTI path) on the model grid.

        Returns channel name → (D, H, W) encoded network-layout tensor, and the grid's RAS affine (None if no input).
        """
        self._ensure_loaded()
        given = {key: str(path) for key, path in inputs.items() if path}
        unknown = sorted(set(given) - set(FIXED_INPUTS))
        if unknown:
            raise ValueError(f"unknown fixed inputs {unknown}; expected {sorted(FIXED_INPUTS)}")
        if not given:
            return {}, None
        grid = self.grid
        loader = build_channel_preprocessing(
            list(given), grid.input_spacing, grid.size, grid.size_mode, self.conventions
        )
        loaded = loader(given)
        fixed = {FIXED_INPUTS[key]: self.conventions.to_network(loaded[key][0].as_tensor()) for key in given}
        affine = loaded[next(iter(given))].affine.numpy()
        return fixed, affine

    def generate(
        self,
        prompt: str | None = None,
        prompt_file: str | None = None,
        num_samples: int = 1,
        seed: int = 0,
        default_prompt: str | None = None,
        image: str | None = None,
        lobe: str | None = None,
        airway: str | None = None,
        vessel: str | None = None,
    ) -> list[dict[str, Path]]:
        """Generate ``num_samples`` per prompt (seeds ``seed``, ``seed + 1``, ...) and write them.

        The reports come from ``prompt`` or ``prompt_file``; with neither, fixed inputs alone give report-free
        samples named ``segmentation`` (CT given) or ``anatomy``, and otherwise ``default_prompt`` is used.
        Returns the written paths of every sample.
        """
        num_samples, seed = int(num_samples), int(seed)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        inputs = {"image": image, "lobe": lobe, "airway": airway, "vessel": vessel}
        no_report = prompt is None and prompt_file in (None, "")
        if no_report and any(inputs.values()):
            prompts = [Prompt("segmentation" if image else "anatomy", None)]
        else:
            prompts = read_prompts(default_prompt if no_report and default_prompt else prompt, prompt_file)
        jobs = [(p, seed + i, f"{p.id}_seed{seed + i}") for p in prompts for i in range(num_samples)]
        for _, _, sample_id in jobs:  # refuse before spending any compute
            self.writer.check_free(sample_id)
        fixed, affine = self.load_fixed(inputs)
        affine = affine if affine is not None else self.grid.output_affine
        if self.pipeline.sr_network is None:  # stage 1 only: the 64³ grid, 4x the spacing, over the same field of view
            affine = self.conventions.lowres_affine(affine)
        written = []
        for index, (p, sample_seed, sample_id) in enumerate(jobs, start=1):
            logger.info(f"sample {index}/{len(jobs)}: {sample_id}")
            output = self.pipeline(p.text, sample_seed, fixed)
            volume = output.volume if output.volume is not None else output.lowres
            metadata = {
                "prompt": p.text,
                "prompt_id": p.id,
                "seed": sample_seed,
                **self.settings,
                "network_evaluations": self._evaluations(p.text is not None),
                "sr_tile": None if output.sr_tile is None else list(output.sr_tile),
                "sr_whole_volume": output.volume is not None and output.sr_tile is None,
                "fixed_inputs": {k: str(v) for k, v in inputs.items() if v},
                "text_encoder": self.text_encoder_name if p.text is not None else None,
                "weights": self.weights,
            }
            written.append(self.writer.write(sample_id, volume, metadata, affine))
        return written

    def _evaluations(self, with_report: bool) -> dict[str, int | None]:
        """Network evaluations per stage of one sample: one more per stage for official weights (the official loop's
        evaluation at t = 0), twice as many in stage 1 when guidance runs both branches (a report and s not 0 or 1)."""
        extra = int(self.conventions.extra_final_evaluation)
        branches = 2 if with_report and self.guidance_scale not in (0.0, 1.0) else 1
        sr = self.steps_sr + extra if self.pipeline.sr_network is not None else None
        return {"lowres": (self.steps_lowres + extra) * branches, "sr": sr}

    def run(self, **kwargs: Any) -> list[dict[str, Path]]:
        """:meth:`generate` for the command line: a failure exits with one line (samples written so far stay)."""
        with exit_in_one_line("inference"):
            return self.generate(**kwargs)

    def synthesize(self, num_folds: int = 5, **kwargs: Any) -> Path:
        """Generate samples and an Auto3DSeg dataset beside them: ``<id>_label.nii.gz`` (lobes 1-5, airway 6,
        vessel 7), ``datalist.json`` (``training`` items with ``image``, ``label``, ``fold``) and
        ``data_src_cfg.yaml`` (modality, datalist, dataroot) for ``monai.apps.auto3dseg.AutoRunner``."""
        if int(num_folds) < 1:
            raise ValueError(f"num_folds must be >= 1, got {num_folds}")
        written = self.generate(**kwargs)
        root = self.writer.output_dir
        items = []
        for i, paths in enumerate(written):
            label = _combined_label(paths)
            sample_id = paths["json"].stem
            label_path = write_nifti(
                root / f"{sample_id}_label.nii.gz",
                label[0],
                label[1],
                "uint8",
                self.writer.overwrite,
                SYNTHETIC_DESCRIPTION,
            )
            items.append({"image": paths["ct"].name, "label": label_path.name, "fold": i % int(num_folds)})
        datalist = write_json(
            root / "datalist.json",
            {
                "name": "MedSyn-MONAI synthetic chest CT",
                "synthetic": True,
                "labels": SEGMENTATION_LABELS,
                "training": items,
            },
            overwrite=True,  # the index of the folder, rebuilt from what the run wrote
        )
        write_text(
            root / "data_src_cfg.yaml",
            f"modality: CT\ndatalist: {datalist.resolve()}\ndataroot: {root.resolve()}\n",
            overwrite=True,
        )
        logger.info(f"wrote Auto3DSeg datalist {datalist} ({len(items)} cases, {num_folds} folds)")
        return datalist

    def run_synthesize(self, **kwargs: Any) -> Path:
        """:meth:`synthesize` for the command line (one-line failure)."""
        with exit_in_one_line("synthesize"):
            return self.synthesize(**kwargs)


def _combined_label(paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """One sample's lobe, airway and vessel files → (label map of ``conventions.SEGMENTATION_LABELS``, affine)."""
    import nibabel as nib

    lobe = nib.load(str(paths["lobe"]))
    airway, vessel = (np.asarray(nib.load(str(paths[name])).dataobj) for name in ("airway", "vessel"))
    return combine_labels(np.asarray(lobe.dataobj), airway, vessel), lobe.affine


__all__ = ["InferenceRunner"]
