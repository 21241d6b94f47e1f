"""Sample previews during training: every K iterations the EMA network generates a volume from a fixed validation
example, written as a PNG montage (axial/coronal/sagittal, CT in a lung window, masks as overlays) and logged to
TensorBoard.

Stage 1 samples from the validation report's token features; stage 2 samples a crop from the nearest ×4 upsampled
low-res copy of the validation crop (the inference condition). A fixed seed makes successive previews comparable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from ignite.engine import Engine, Events

from scripts.conventions import ModelConventions, get_conventions
from scripts.data.io import atomic_path
from scripts.diffusion import (
    ClassifierFreeGuidance,
    ContinuousDDIMScheduler,
    NetworkDenoiser,
    SuperResolutionDenoiser,
    downsample_nearest,
    sample_ddim,
    upsample_nearest,
)
from scripts.visualization import montage_array

logger = logging.getLogger(__name__)

STAGES = ("lowres", "sr")


def _spacing_ras(example: Any, conventions: ModelConventions, fallback: float = 1.0) -> tuple[float, float, float]:
    """Voxel sizes of a MetaTensor in RAS order (its affine is in the network layout); 1 mm without metadata."""
    affine = getattr(example, "affine", None)
    if affine is None:
        return (fallback,) * 3
    ras = conventions.ras_affine(np.asarray(affine, dtype=np.float64), tuple(example.shape[-3:]))
    return tuple(float(s) for s in np.linalg.norm(ras[:3, :3], axis=0))


class SamplePreview:
    """Every ``interval`` iterations (and at the end) sample one volume with ``network`` and save a montage.

    Args:
        network: the network to sample with (the EMA copy: ``EMAHandler.model``).
        stage: ``lowres`` (text-conditioned) or ``sr`` (conditioned on the upsampled low-res copy).
        example: one validation item (a dataset element): ``lowres`` and ``context`` for stage 1, ``image`` (a crop)
            for stage 2.
        output_dir: folder of the PNGs, ``<stage>_<iteration>.png``.
        interval: iterations between previews (> 0).
        num_steps: DDIM steps (few: this is a preview).
        seed: seed of the starting noise.
        guidance_scale: classifier-free guidance scale of stage 1 (1 = none, MedSyn's default).
        summary_writer: optional TensorBoard ``SummaryWriter``; the montage is logged as ``preview/<stage>``.
        device: device to sample on; default the network's.
        conventions: the network side of the conventions of the run (axis layout, mask encoding, final evaluation).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        stage: str,
        example: Mapping[str, Any],
        output_dir: str | os.PathLike,
        interval: int = 100,
        num_steps: int = 10,
        seed: int = 0,
        guidance_scale: float = 1.0,
        summary_writer: Any | None = None,
        device: str | torch.device | None = None,
        conventions: str | ModelConventions | None = None,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if interval < 1 or num_steps < 1:
            raise ValueError(f"interval and num_steps must be >= 1, got {interval} and {num_steps}")
        self.network, self.stage = network, stage
        self.output_dir = Path(output_dir)
        self.interval, self.num_steps, self.seed = int(interval), int(num_steps), int(seed)
        self.guidance_scale = float(guidance_scale)
        self.summary_writer = summary_writer
        self.device = device
        self.conventions = get_conventions(conventions)
        key = "lowres" if stage == "lowres" else "image"
        if key not in example:
            raise KeyError(f"the preview example has no '{key}' (keys: {sorted(map(str, example))})")
        reference = example[key]
        self.spacing = _spacing_ras(reference, self.conventions)
        self.shape = (1, *tuple(reference.shape))
        if stage == "lowres":
            self.context = torch.as_tensor(example["context"]).float()[None] if "context" in example else None
            self.condition = None
        else:
            volume = torch.as_tensor(reference).float()[None]
            self.condition = upsample_nearest(downsample_nearest(volume))
            self.context = None
        self.title = str(example.get("report", ""))[:100] if stage == "lowres" else "super-resolution of the ↓4 crop"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def sample(self) -> torch.Tensor:
        """One sample (1, 4, D, H, W) in [-1, 1] from the fixed seed."""
        device = self.device or next(self.network.parameters()).device
        was_training = self.network.training
        self.network.eval()
        try:
            if self.stage == "sr":
                denoise = SuperResolutionDenoiser(self.network, self.condition.to(device))
            elif self.context is None:
                denoise = NetworkDenoiser(self.network)
            else:
                denoise = ClassifierFreeGuidance(self.network, self.context.to(device), self.guidance_scale)
            scheduler = ContinuousDDIMScheduler.for_conventions(self.conventions)
            return sample_ddim(
                denoise,
                self.shape,
                self.num_steps,
                generator=self.seed,
                device=device,
                scheduler=scheduler,
                progress=False,
            )
        finally:
            self.network.train(was_training)

    def render(self, sample: torch.Tensor) -> np.ndarray:
        """The montage of a sample (1, 4, D, H, W) as an (H, W, 3) uint8 image."""
        decoded = self.conventions.decode_ras(sample[0].float().cpu().numpy())
        ct = decoded.pop("ct")
        return montage_array(ct, masks=decoded, spacing=self.spacing, title=self.title)

    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        path = self.output_dir / f"{self.stage}_{iteration:07d}.png"
        if path.exists():
            return  # the final preview fell on an interval one
        image = self.render(self.sample())
        with atomic_path(path, overwrite=True) as tmp:
            plt.imsave(tmp, image, format="png")
        if self.summary_writer is not None:
            self.summary_writer.add_image(f"preview/{self.stage}", image, iteration, dataformats="HWC")
            self.summary_writer.flush()
        logger.info(f"sample preview at iteration {iteration}: {path}")


__all__ = ["SamplePreview"]
