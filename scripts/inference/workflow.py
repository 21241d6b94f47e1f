"""The ``inference`` and ``synthesize`` runs of ``configs/inference.json``.

:class:`InferenceRunner` loads the weights (with an error that says where to get missing ones), builds the
:class:`~scripts.inference.pipeline.MedSynPipeline`, puts fixed anatomy or CT inputs on the model grid, and writes
every sample with :class:`~scripts.inference.writer.SampleWriter`. :meth:`InferenceRunner.run` is the command-line
face: any failure ends the process with one line naming the problem, after the samples already finished were kept.

Rerunning a command resumes it: a sample whose files are complete and whose sidecar records the same request
(report, seed, settings, weights, fixed inputs) is kept, an incomplete one (no sidecar: an interrupted write) is made
again, and one finished for another request is refused unless ``--overwrite true``; all of it decided before any
sampling. ``synthesize`` merges its cases into the folder's ``datalist.json`` instead of replacing the index.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.cli import exit_in_one_line, parse_bool, parse_number, parse_optional_numbers, parse_tile
from scripts.conventions import LOWRES_FACTOR, SEGMENTATION_LABELS
from scripts.data.auto3dseg import DATALIST_FILE, absent_label_classes, write_data_source
from scripts.data.io import OutputExistsError, check_output_folder, json_text, write_json
from scripts.data.transforms import build_channel_preprocessing
from scripts.diffusion import PRECISIONS, SCHEDULERS, ContinuousDDIMScheduler, get_scheduler
from scripts.engines.distributed import local_device, process_rank, wait_for_all_ranks
from scripts.inference.cascade import load_cascade
from scripts.inference.pipeline import MedSynPipeline
from scripts.inference.prompts import Prompt, read_prompts
from scripts.inference.writer import OUTPUT_FORMATS, SampleWriter

logger = logging.getLogger(__name__)

FIXED_INPUTS = {"image": "ct", "lobe": "lobe", "airway": "airway", "vessel": "vessel"}  # CLI key → channel

DATASET_NAME = "MedSyn-MONAI synthetic chest CT"  # the "name" of the datalist.json synthesize writes


def _sampler_record(name: str, scheduler: ContinuousDDIMScheduler) -> str:
    """The sampler as a sidecar records it: its name, with its grid where that is not the official uniform one
    (``"dpmpp_2m (logsnr grid)"``), so samples of another grid are not taken for this request's."""
    return name if scheduler.timestep_spacing == "uniform" else f"{name} ({scheduler.timestep_spacing} grid)"


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
        overwrite: replace existing sample files (otherwise a rerun keeps the finished samples of the same request
            and makes the rest).
        progress: progress bars.
        size_mode: how fixed inputs are put on the model grid instead of the recorded way (``pad_crop``, ``resize``,
            ``atlas``).
        text_encoder_base: config and tokenizer of the official language model (default: the base the weights
            record, CXR-BERT, from the local Hugging Face cache).
        output_format: ``nifti`` (default), ``dicom`` (the CT as a DICOM series and the lobe, airway and vessel maps
            as a DICOM Segmentation, instead of the NIfTI volumes) or ``both``.
        sampler_lowres, sampler_sr: the sampler of each stage: ``ddim`` (default; the official loop) or
            ``dpmpp_2m`` (DPM-Solver++(2M): second order, so fewer steps for the same result).
        precision: ``float32`` (default), ``bfloat16`` or ``float16``: the networks under autocast (fast on GPUs),
            the sampler in float32.
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
        output_format: str = "nifti",
        sampler_lowres: str = "ddim",
        sampler_sr: str = "ddim",
        precision: str = "float32",
    ) -> None:
        # nothing is loaded here: the command line reports loading problems in one line (see run)
        self.lowres_weights, self.sr_weights = lowres_weights, sr_weights or None
        self.output_dir = output_dir
        self.text_encoder = text_encoder if isinstance(text_encoder, (str, type(None))) else None
        self._text_encoder = None if self.text_encoder is not None or text_encoder is None else text_encoder
        self.guidance_scale = parse_number(guidance_scale, "guidance_scale")
        self.steps_lowres = parse_number(steps_lowres, "steps_lowres", int, minimum=1)
        self.steps_sr = parse_number(steps_sr, "steps_sr", int, minimum=1)
        self.spacing_override = parse_optional_numbers(spacing, "spacing", minimum=1e-3)
        self.sr_tile = parse_tile(sr_tile)
        self.sr_overlap = parse_number(sr_overlap, "sr_overlap", minimum=0.0, maximum=0.95)
        self.device = torch.device(device) if device is not None else None
        self.overwrite = parse_bool(overwrite, "overwrite")
        self.progress = progress
        self.size_mode_override = size_mode or None
        self.text_encoder_base = text_encoder_base or None
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
        self.output_format = output_format
        for option, name in (("sampler_lowres", sampler_lowres), ("sampler_sr", sampler_sr)):
            if name not in SCHEDULERS:
                raise ValueError(f"--{option} must be one of {', '.join(SCHEDULERS)}, got {name!r}")
        self.sampler_lowres, self.sampler_sr = sampler_lowres, sampler_sr
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self._pipeline: MedSynPipeline | None = None

    def _load(self) -> None:
        """Load both networks; the model grid and conventions come from their descriptions (:mod:`.cascade`)."""
        if (
            process_rank()[1] > 1
            and self.device is not None
            and self.device.type == "cuda"
            and self.device.index is None
        ):
            self.device = local_device()  # one GPU per process under torchrun: cuda:<LOCAL_RANK>
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
            scheduler=get_scheduler(self.sampler_lowres, self.conventions),
            sr_scheduler=get_scheduler(self.sampler_sr, self.conventions),
            precision=self.precision,
        )
        pipeline = self._pipeline
        self.settings = {
            "guidance_scale": self.guidance_scale,
            "steps_lowres": self.steps_lowres,
            "steps_sr": self.steps_sr if sr is not None else None,
            "sampler_lowres": _sampler_record(self.sampler_lowres, pipeline.scheduler),
            "sampler_sr": _sampler_record(self.sampler_sr, pipeline.sr_scheduler) if sr is not None else None,
            "precision": self.precision,
        }
        self._writer = SampleWriter(
            self.output_dir, self.conventions, overwrite=self.overwrite, output_format=self.output_format
        )

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
        loaded = loader({**given, "id": "fixed inputs"})  # the id names them in error messages
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
        label: bool = False,
    ) -> list[dict[str, Path]]:
        """Generate ``num_samples`` per prompt (seeds ``seed``, ``seed + 1``, ...) and write them.

        The reports come from ``prompt`` or ``prompt_file``; with neither, fixed inputs alone give report-free
        samples named ``segmentation`` (CT given) or ``anatomy``, and otherwise ``default_prompt`` is used.
        Samples already finished for the same request are kept (see the module docstring). ``label`` also writes
        each sample's combined label map (``synthesize``). Under ``torchrun`` (``WORLD_SIZE`` > 1) every process
        plans the same samples and makes every world-th one still to make, on ``cuda:<LOCAL_RANK>`` when the device
        is CUDA. Returns the paths of every sample of the request.
        """
        num_samples = parse_number(num_samples, "num_samples", int, minimum=1)
        seed = parse_number(seed, "seed", int, minimum=0)
        check_output_folder(self.output_dir, "output_dir")
        self._ensure_loaded()
        inputs = {"image": image, "lobe": lobe, "airway": airway, "vessel": vessel}
        no_report = prompt is None and prompt_file in (None, "")
        if no_report and any(inputs.values()):
            prompts = [Prompt("segmentation" if image else "anatomy", None)]
        else:
            prompts = read_prompts(default_prompt if no_report and default_prompt else prompt, prompt_file)
        jobs = []
        for p in prompts:
            for sample_seed in range(seed, seed + num_samples):
                sample_id, request = f"{p.id}_seed{sample_seed}", self._request(p, sample_seed, inputs)
                jobs.append((sample_id, request, self.writer.plan(sample_id, request, label)))  # refusals: no compute
        todo = [(sample_id, request) for sample_id, request, action in jobs if action == "write"]
        if len(todo) < len(jobs):
            logger.info(
                f"{len(jobs) - len(todo)} of {len(jobs)} samples already finished with the same request: kept "
                "(--overwrite true makes them again)"
            )
        rank, world = process_rank()
        if world > 1:  # under torchrun every process plans the same list and makes every world-th sample of it
            todo = todo[rank::world]
            logger.info(f"rank {rank} of {world}: {len(todo)} samples to make")
        if todo:
            fixed, affine = self.load_fixed(inputs)
            affine = affine if affine is not None else self.grid.output_affine
            if self.pipeline.sr_network is None:  # stage 1 only: the 64³ grid, 4x the spacing, same field of view
                affine = self.conventions.lowres_affine(affine)
        for index, (sample_id, request) in enumerate(todo, start=1):
            logger.info(f"sample {index}/{len(todo)}: {sample_id}")
            output = self.pipeline(request["prompt"], request["seed"], fixed)
            volume = output.volume if output.volume is not None else output.lowres
            metadata = {
                **request,
                "network_evaluations": self._evaluations(request["prompt"] is not None),
                "sr_tile": None if output.sr_tile is None else list(output.sr_tile),
                "sr_whole_volume": output.volume is not None and output.sr_tile is None,
            }
            self.writer.write(sample_id, volume, metadata, affine, label)
        return [self.writer.paths(sample_id, label) for sample_id, _, _ in jobs]

    def _request(self, prompt: Prompt, seed: int, inputs: dict[str, str | None]) -> dict[str, Any]:
        """What makes a sample what it is, as its sidecar records it: a finished sample recording the same request
        is kept on a rerun. (How stage 2 was tiled is left out: it depends on free memory, not on the request.)"""
        request = {
            "prompt": prompt.text,
            "prompt_id": prompt.id,
            "seed": seed,
            **self.settings,
            "fixed_inputs": {k: str(v) for k, v in inputs.items() if v},
            "text_encoder": self.text_encoder_name if prompt.text is not None else None,
            "weights": self.weights,
        }
        return json.loads(json_text(request))  # as read back from the sidecar

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
        ``data_src_cfg.yaml`` (modality, datalist, dataroot) for ``monai.apps.auto3dseg.AutoRunner``, every path
        relative to the folder (:mod:`scripts.data.auto3dseg`).

        Under ``torchrun`` each process makes every world-th sample (:meth:`generate`) and rank 0 writes the index
        once all have finished; the files are those a single process writes.

        A folder that holds a dataset already gains this run's cases: its ``datalist.json`` keeps the other cases
        and their folds (a case made again keeps its fold, a new one gets the next fold in turn). A declared class
        that no label map holds is listed in the datalist's ``absent_labels`` and logged as a warning: Auto3DSeg
        would build a network without it.
        """
        num_folds = parse_number(num_folds, "num_folds", int, minimum=1)
        if self.output_format == "dicom":
            raise ValueError(
                "synthesize writes an Auto3DSeg dataset of NIfTI label maps: pass --output_format nifti or both"
            )
        root = Path(self.output_dir)
        index = _read_dataset_index(root / DATALIST_FILE)  # a foreign datalist.json is refused before sampling
        written = self.generate(label=True, **kwargs)  # the paths of every sample, whichever process made it
        wait_for_all_ranks()
        if process_rank()[0] != 0:  # rank 0 writes the index once every process has written its samples
            return root / DATALIST_FILE
        items = {item["image"]: item for item in index}
        for paths in written:
            image = paths["ct"].name
            fold = items[image]["fold"] if image in items else len(items) % num_folds
            items[image] = {"image": image, "label": paths["label"].name, "fold": fold}
        absent = absent_label_classes(root, items.values(), SEGMENTATION_LABELS)
        datalist = write_json(
            root / DATALIST_FILE,
            {
                "name": DATASET_NAME,
                "synthetic": True,
                "labels": SEGMENTATION_LABELS,
                "absent_labels": absent,
                "training": list(items.values()),
            },
            overwrite=True,  # the folder's index: the cases it listed are kept, this run's added
        )
        write_data_source(root)
        logger.info(f"wrote Auto3DSeg datalist {datalist} ({len(items)} cases, {len(written)} from this run)")
        return datalist

    def run_synthesize(self, **kwargs: Any) -> Path:
        """:meth:`synthesize` for the command line (one-line failure)."""
        with exit_in_one_line("synthesize"):
            return self.synthesize(**kwargs)


def _read_dataset_index(path: Path) -> list[dict[str, Any]]:
    """The cases of a synthetic dataset's ``datalist.json`` (none when there is no such file); a datalist of
    another dataset is refused, since this folder's index would replace it."""
    if not path.exists():
        return []
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputExistsError(
            f"{path} exists and is not a readable datalist ({err}); use another --output_dir"
        ) from None
    if not (isinstance(index, dict) and index.get("synthetic") is True and index.get("name") == DATASET_NAME):
        raise OutputExistsError(
            f"{path} is the datalist of another dataset, not of MedSyn-MONAI synthetic cases; use another --output_dir"
        )
    if index.get("labels") != json.loads(json_text(SEGMENTATION_LABELS)):  # JSON keys are strings
        raise OutputExistsError(f"{path} declares other label classes than this bundle's; use another --output_dir")
    items = index.get("training", [])
    if not all(isinstance(item, dict) and {"image", "label", "fold"} <= item.keys() for item in items):
        raise OutputExistsError(f"{path}: its training items lack image / label / fold; use another --output_dir")
    return items


__all__ = ["InferenceRunner"]
