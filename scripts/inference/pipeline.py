"""The MedSyn cascade as a pipeline: encode the report, sample 64³ jointly, super-resolve to 256³.

The pipeline only composes pieces (diffusers style): networks from :mod:`scripts.networks`, denoiser wrappers, a
scheduler and the DDIM loop from :mod:`scripts.diffusion`, tiling from :mod:`.tiling`. Every random number of a
sample comes from its own seed, drawn on the CPU, so a sample does not depend on the batch or the device it was made
on (up to floating-point differences between devices); or the caller gives the starting noise of each stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from scripts.conventions import CHANNELS, LOWRES_FACTOR, NUM_CHANNELS
from scripts.diffusion import (
    PRECISIONS,
    AutocastDenoiser,
    ClassifierFreeGuidance,
    ContinuousDDIMScheduler,
    FixedChannels,
    NetworkDenoiser,
    SuperResolutionDenoiser,
    ddim_sample_loop,
    downsample_nearest,
    upsample_nearest,
)
from scripts.inference.tiling import SlidingWindowNetwork, auto_tile

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # reports -> (B, 192, H) token features


@dataclass
class PipelineOutput:
    """One generated sample, channels [CT, lobe, airway, vessel] in [-1, 1], network layout (D, H, W), on CPU.

    Attributes:
        lowres: (4, d, h, w) stage-1 output.
        volume: (4, 4d, 4h, 4w) stage-2 output, or None when the pipeline has no super-resolution network.
        sr_tile: the tile stage 2 ran in (D, H, W; -1 = whole axis), or None for the whole volume at once.
    """

    lowres: torch.Tensor
    volume: torch.Tensor | None
    sr_tile: tuple[int, int, int] | None = None


class MedSynPipeline:
    """Report → joint CT + anatomy volume, with any channels held fixed.

    Args:
        lowres_network: stage-1 network ``(x, timesteps, context=None, drop_context=None) -> x̂0``.
        sr_network: stage-2 network (8 → 4 channels), or None to stop at low resolution.
        text_encoder: reports → (B, 192, H) features matching the low-res network's context width; None allows
            only report-free sampling (the learned null embedding).
        lowres_size: stage-1 spatial size (D, H, W); stage 2 is ``LOWRES_FACTOR`` times larger.
        lowres_steps: DDIM steps of stage 1 (MedSyn: 50).
        sr_steps: DDIM steps of stage 2 (MedSyn: 20).
        guidance_scale: classifier-free guidance scale, 1 = plain conditional sampling (MedSyn's default).
        batch_guidance: with guidance, run the conditional and null branches in one forward pass of batch 2
            (default; faster on a GPU); False runs them one after the other, for half the stage-1 activation memory.
        sr_roi_size: tile (D, H, W) for memory-bounded stage 2 (-1 = whole axis); None runs the whole volume (as the
            official code does); ``"auto"`` the whole volume when the device has room, else slabs (:func:`auto_tile`).
        sr_overlap: tile overlap fraction.
        device: where the networks run; default CUDA when available.
        progress: show progress bars.
        scheduler: the sampler of stage 1 (and of stage 2 unless ``sr_scheduler``); default
            ``ContinuousDDIMScheduler()``. For official weights use ``get_scheduler(name, MEDSYN_OFFICIAL)`` (one more
            evaluation at t = 0); ``ContinuousDPMSolverScheduler`` needs fewer steps for the same result.
        sr_scheduler: the sampler of stage 2; default ``scheduler``.
        precision: ``float32`` (default), or ``bfloat16`` / ``float16``: the networks run under autocast, the sampler
            in float32 (:class:`~scripts.diffusion.AutocastDenoiser`); bfloat16 is the fast setting on GPUs.
    """

    def __init__(
        self,
        lowres_network: nn.Module,
        sr_network: nn.Module | None = None,
        text_encoder: TextEncoder | None = None,
        lowres_size: Sequence[int] = (64, 64, 64),
        lowres_steps: int = 50,
        sr_steps: int = 20,
        guidance_scale: float = 1.0,
        batch_guidance: bool = True,
        sr_roi_size: Sequence[int] | str | None = None,
        sr_overlap: float = 0.25,
        device: str | torch.device | None = None,
        progress: bool = True,
        scheduler: ContinuousDDIMScheduler | None = None,
        sr_scheduler: ContinuousDDIMScheduler | None = None,
        precision: str = "float32",
    ) -> None:
        if len(lowres_size) != 3 or min(lowres_size) < 1:
            raise ValueError(f"lowres_size must be three positive sizes (D, H, W), got {list(lowres_size)}")
        if lowres_steps < 1 or sr_steps < 1:
            raise ValueError(f"step counts must be >= 1, got lowres_steps={lowres_steps}, sr_steps={sr_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.device = torch.device(device) if device is not None else _default_device()
        self.lowres_network = lowres_network.to(self.device).eval()
        self.sr_network = None if sr_network is None else sr_network.to(self.device).eval()
        self.text_encoder = text_encoder
        self.lowres_size = tuple(int(s) for s in lowres_size)
        self.lowres_steps, self.sr_steps = int(lowres_steps), int(sr_steps)
        self.guidance_scale = float(guidance_scale)
        self.batch_guidance = bool(batch_guidance)
        if isinstance(sr_roi_size, str) and sr_roi_size != "auto":
            raise ValueError(f"sr_roi_size must be a (D, H, W) tile, None or 'auto', got {sr_roi_size!r}")
        self.sr_roi_size = sr_roi_size if sr_roi_size in (None, "auto") else tuple(int(s) for s in sr_roi_size)
        self.sr_overlap = sr_overlap
        self.progress = progress
        self.scheduler = scheduler if scheduler is not None else ContinuousDDIMScheduler()
        self.sr_scheduler = sr_scheduler if sr_scheduler is not None else self.scheduler
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    def _autocast(self, denoise: Callable) -> Callable:
        dtype = PRECISIONS[self.precision]
        return denoise if dtype is None else AutocastDenoiser(denoise, self.device.type, dtype)

    @property
    def size(self) -> tuple[int, int, int]:
        """Spatial size (D, H, W) of the final output."""
        factor = LOWRES_FACTOR if self.sr_network is not None else 1
        return tuple(s * factor for s in self.lowres_size)

    def encode(self, prompt: str | None) -> torch.Tensor | None:
        """(1, 192, H) features of one report, or None (null embedding) for no report."""
        if prompt is None:
            return None
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder; give one, or sample without a report")
        return self.text_encoder([prompt]).to(self.device, torch.float32)

    def _noise(
        self, given: torch.Tensor | None, spatial: Sequence[int], generator: torch.Generator, name: str
    ) -> torch.Tensor:
        """The starting noise of a stage: the caller's (checked), else drawn from the sample's generator."""
        shape = (1, NUM_CHANNELS, *spatial)
        if given is None:
            return torch.randn(shape, generator=generator).to(self.device)
        given = torch.as_tensor(given)
        if tuple(given.shape) != shape or not given.is_floating_point() or not torch.isfinite(given).all():
            raise ValueError(
                f"{name} must be finite floating-point noise of shape {shape} (network layout), got "
                f"{given.dtype} {tuple(given.shape)}"
            )
        return given.to(self.device, torch.float32)

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | None,
        seed: int,
        fixed: Mapping[str, torch.Tensor] | None = None,
        noise_lowres: torch.Tensor | None = None,
        noise_sr: torch.Tensor | None = None,
    ) -> PipelineOutput:
        """Generate one sample.

        Args:
            prompt: report text, or None for report-free sampling (e.g. segmentation without a report).
            seed: the sample's seed; the same seed, prompt, fixed channels and weights give the same sample.
            fixed: channel name (``ct``, ``lobe``, ``airway``, ``vessel``) → encoded values in network units on the
                full model grid (``LOWRES_FACTOR`` × ``lowres_size``, also without a stage 2), shape (D, H, W) in
                network layout. Held at every step of both stages (downsampled by nearest striding for stage 1, as
                training data is). Fixing ``ct`` segments it.
            noise_lowres: the starting noise of stage 1, (1, 4, *lowres_size) in network layout, instead of the
                seed's first draw (e.g. to reproduce another implementation's loop).
            noise_sr: the starting noise of stage 2, (1, 4, *size), instead of the seed's next draw.
        """
        fixed = dict(fixed or {})
        names = [name for name in CHANNELS if name in fixed]
        unknown = sorted(set(fixed) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown fixed channels {unknown}; expected names from {CHANNELS}")
        values = None
        if names:
            values = torch.stack([torch.as_tensor(fixed[n], dtype=torch.float32) for n in names])[None]
            grid = tuple(s * LOWRES_FACTOR for s in self.lowres_size)
            if tuple(values.shape[2:]) != grid:
                raise ValueError(
                    f"fixed channels have shape {tuple(values.shape[2:])}, the model grid is {grid} (D, H, W); "
                    "resample them with scripts.data.transforms.build_channel_preprocessing"
                )
            values = values.to(self.device)
        generator = torch.Generator().manual_seed(int(seed))
        context = self.encode(prompt)

        denoise = (
            NetworkDenoiser(self.lowres_network, None)
            if context is None
            else ClassifierFreeGuidance(self.lowres_network, context, self.guidance_scale, self.batch_guidance)
        )
        denoise = self._autocast(denoise)
        if values is not None:
            denoise = FixedChannels(denoise, downsample_nearest(values), names)
        noise = self._noise(noise_lowres, self.lowres_size, generator, "noise_lowres")
        lowres = ddim_sample_loop(denoise, noise, self.lowres_steps, self.scheduler, progress=self.progress)
        if self.sr_network is None:
            return PipelineOutput(lowres=lowres[0].float().cpu(), volume=None)

        network: nn.Module = self.sr_network
        tile = self.sr_roi_size
        if tile == "auto":
            tile = auto_tile(network, self.size, self.device)
        if tile is not None:
            network = SlidingWindowNetwork(network, tile, overlap=self.sr_overlap)
        denoise = self._autocast(SuperResolutionDenoiser(network, upsample_nearest(lowres)))
        if values is not None:
            denoise = FixedChannels(denoise, values, names)
        noise = self._noise(noise_sr, self.size, generator, "noise_sr")
        volume = ddim_sample_loop(denoise, noise, self.sr_steps, self.sr_scheduler, progress=self.progress)
        return PipelineOutput(lowres=lowres[0].float().cpu(), volume=volume[0].float().cpu(), sr_tile=tile)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
