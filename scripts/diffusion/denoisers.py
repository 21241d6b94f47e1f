"""Denoisers: callables ``denoise(x_t, timesteps) -> x̂0`` built by composing small wrappers (k-diffusion style).

The network contract (scripts/networks): ``network(x, timesteps, context=None, drop_context=None) -> x̂0`` with
x (B, C, D, H, W), timesteps (B,) float = t * 1000, context (B, 192, H) text tokens or None (the network's learned
null embedding), drop_context an optional bool (B,) marking samples whose context is replaced by the null embedding.
The super-resolution network takes ``cat(upsampled low-res (4 ch), x_t (4 ch))`` and no context.

Compose, innermost first::

    denoise = NetworkDenoiser(net, context)                             # text-to-CT, no guidance (MedSyn default)
    denoise = ClassifierFreeGuidance(net, context, guidance_scale=3.0)  # guided
    denoise = FixedChannels(denoise, ct, channels=["ct"])               # segmentation: CT given, masks generated
    denoise = FixedChannels(denoise, masks, channels=["lobe", "airway", "vessel"])  # anatomy-controlled synthesis
    denoise = SuperResolutionDenoiser(sr_net, upsample_nearest(lowres))  # stage 2
    denoise = AutocastDenoiser(denoise, "cuda", torch.bfloat16)         # bf16 network, float32 sampler
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from scripts.conventions import CHANNELS


class Denoiser(Protocol):
    """``denoise(x_t, timesteps) -> x̂0``; x_t (B, C, *spatial), timesteps (B,) float network units, x̂0 like x_t."""

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...


def _match_batch(tensor: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    """Expand a batch of 1 to ``batch_size``; any other mismatch is an error."""
    if tensor.shape[0] == batch_size:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch_size, *tensor.shape[1:])
    raise ValueError(f"{name} has batch size {tensor.shape[0]}, expected 1 or {batch_size}")


class NetworkDenoiser:
    """A network (and optional fixed text context) as a denoiser.

    Args:
        network: ``network(x, timesteps[, context=...]) -> x̂0``.
        context: text tokens (B or 1, 192, H) passed as ``context=``; None calls the network without context
            (the unconditional/null branch, or a network such as super-resolution that takes none).
    """

    def __init__(self, network: nn.Module, context: torch.Tensor | None = None) -> None:
        self.network = network
        self.context = context

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            return self.network(x_t, timesteps)
        return self.network(x_t, timesteps, context=_match_batch(self.context, x_t.shape[0], "context"))


class ClassifierFreeGuidance:
    """Classifier-free guidance ``x̂0 = null + s * (cond - null)`` around a text-conditioned network.

    ``s = 1`` is exactly the conditional prediction and ``s = 0`` exactly the null one; either evaluates one branch.
    Otherwise both branches run, by default in one forward of batch 2B using ``drop_context`` to select the null
    embedding for the second half (one call is faster on a GPU; set ``batch_branches=False`` to halve peak memory).

    Args:
        network: ``network(x, timesteps, context=None, drop_context=None) -> x̂0``.
        context: text tokens (B or 1, 192, H).
        guidance_scale: s >= 0; MedSyn uses 1 (no guidance) and 3 in its mask-conditioned script.
        batch_branches: evaluate conditional and null branches in one forward pass; default True.
    """

    def __init__(
        self, network: nn.Module, context: torch.Tensor, guidance_scale: float = 1.0, batch_branches: bool = True
    ) -> None:
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if context is None:
            raise ValueError("classifier-free guidance needs a text context; use NetworkDenoiser for none")
        self.network = network
        self.context = context
        self.guidance_scale = float(guidance_scale)
        self.batch_branches = batch_branches

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        batch = x_t.shape[0]
        context = _match_batch(self.context, batch, "context")
        if self.guidance_scale == 1.0:
            return self.network(x_t, timesteps, context=context)
        if self.guidance_scale == 0.0:
            return self.network(x_t, timesteps)
        if self.batch_branches:
            # first half conditional, second half with the context swapped for the null embedding
            drop = torch.arange(2 * batch, device=x_t.device) >= batch
            both = self.network(
                torch.cat([x_t, x_t]),
                torch.cat([timesteps, timesteps]),
                context=torch.cat([context, context]),
                drop_context=drop,
            )
            cond, null = both.chunk(2)
        else:
            cond = self.network(x_t, timesteps, context=context)
            null = self.network(x_t, timesteps)
        return null + self.guidance_scale * (cond - null)


def channel_indices(channels: Sequence[int | str]) -> list[int]:
    """Channel names (``conventions.CHANNELS``: ct, lobe, airway, vessel) or indices → unique indices.

    Args:
        channels: names or non-negative indices, e.g. ``["ct"]`` or ``[1, 2, 3]``.
    """
    indices = []
    for channel in channels:
        if isinstance(channel, str):
            if channel not in CHANNELS:
                raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS} or an index")
            indices.append(CHANNELS.index(channel))
        elif isinstance(channel, int) and not isinstance(channel, bool) and channel >= 0:
            indices.append(channel)
        else:
            raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS} or a non-negative index")
    if not indices:
        raise ValueError("channels must name at least one channel")
    if len(set(indices)) != len(indices):
        raise ValueError(f"channels repeat a channel: {list(channels)}")
    return indices


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class AutocastDenoiser:
    """Run a denoiser under ``torch.autocast`` (convolutions and matrix products in bf16 or fp16) and return x̂0 in
    float32, so the sampler's update, the clipping and fixed channels stay in float32. The networks keep their own
    float32 islands (group-norm statistics).

    Args:
        denoiser: the inner denoiser (a network wrapper).
        device_type: ``"cuda"`` or ``"cpu"``, where the networks run.
        dtype: ``torch.bfloat16`` (GPUs from Ampere on; no loss scaling needed) or ``torch.float16``.
    """

    def __init__(self, denoiser: Denoiser, device_type: str, dtype: torch.dtype) -> None:
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be bfloat16 or float16, got {dtype}")
        self.denoiser, self.device_type, self.dtype = denoiser, device_type, dtype

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            x0_hat = self.denoiser(x_t, timesteps)
        return x0_hat.float()


class FixedChannels:
    """Hold some channels of x̂0 at known values (anatomy control; segmentation when the CT is fixed).

    Every call overwrites the listed channels of the inner denoiser's x̂0 with ``values`` before the DDIM update,
    so the final sample (which is x̂0 of the last step) holds them exactly.

    Args:
        denoiser: the inner denoiser.
        values: known values in [-1, 1] (encoded with ``scripts.conventions``), shape (B or 1, len(channels),
            *spatial) in the order of ``channels``.
        channels: names from ``conventions.CHANNELS`` or indices of the channels to fix.
    """

    def __init__(self, denoiser: Denoiser, values: torch.Tensor, channels: Sequence[int | str]) -> None:
        self.channels = channel_indices(channels)
        if values.ndim < 3 or values.shape[1] != len(self.channels):
            raise ValueError(
                f"values must have shape (B, {len(self.channels)}, *spatial) for channels {list(channels)}, "
                f"got {tuple(values.shape)}"
            )
        # the scheduler clips x̂0 to [-1, 1]; values outside would be changed and not stay fixed
        if values.min() < -1 or values.max() > 1:
            raise ValueError("fixed values must lie in [-1, 1]; encode them with scripts.conventions first")
        self.denoiser = denoiser
        self.values = values

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        x0_hat = self.denoiser(x_t, timesteps)
        if max(self.channels) >= x0_hat.shape[1]:
            raise ValueError(f"channel index {max(self.channels)} out of range for {x0_hat.shape[1]} channels")
        if self.values.shape[2:] != x0_hat.shape[2:]:
            raise ValueError(
                f"fixed values have spatial shape {tuple(self.values.shape[2:])}, sample {tuple(x0_hat.shape[2:])}"
            )
        values = _match_batch(self.values, x0_hat.shape[0], "fixed values").to(x0_hat)
        index = torch.tensor(self.channels, device=x0_hat.device)
        return x0_hat.index_copy(1, index, values)


class SuperResolutionDenoiser:
    """The super-resolution network as a denoiser: the condition is concatenated before x_t on the channels.

    Args:
        network: ``network(cat(condition, x_t), timesteps) -> x̂0`` (8 → 4 channels in MedSyn).
        condition: the low-res volume already upsampled to the sample's size (``conditioning.upsample_nearest``),
            shape (B or 1, C_cond, *spatial).
    """

    def __init__(self, network: nn.Module, condition: torch.Tensor) -> None:
        self.network = network
        self.condition = condition

    def __call__(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.condition.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"condition has spatial shape {tuple(self.condition.shape[2:])}, sample {tuple(x_t.shape[2:])}; "
                "upsample the low-res volume with conditioning.upsample_nearest"
            )
        condition = _match_batch(self.condition, x_t.shape[0], "condition").to(x_t)
        return self.network(torch.cat([condition, x_t], dim=1), timesteps)
