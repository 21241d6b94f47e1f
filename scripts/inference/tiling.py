"""Run a denoiser network over overlapping tiles (MONAI ``sliding_window_inference``) to bound memory, and decide
when that is needed.

The wrapper has the network's own call signature, so the diffusion denoisers and the sampler use it unchanged:
``SuperResolutionDenoiser(SlidingWindowNetwork(sr_net, roi_size=(64, -1, -1)), condition)``. Tiling is an
approximation: GroupNorm statistics are taken per tile, so a tiled volume differs from the whole-volume one that the
official MedSyn code computes. :func:`auto_tile` therefore runs the whole volume whenever the device has room.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn

logger = logging.getLogger(__name__)

# Peak memory of super-resolution sampling: about 8 float32 activations per channel of the network's first level over
# the volume it runs on (the whole volume or one tile), plus whole-volume tensors (the 8-channel input, the sample, its
# x̂0 and noise direction, the sliding window's output and weight maps). Measured (docs/benchmarks.md): the paper
# network (d=56) peaks at 3.83 GiB for a 128³ step, 1961 bytes per voxel against 32 * 56 + 128 = 1920, and at
# 9.23 GiB for 64-slice slabs of 256³, against 16.8 M * 128 + 4.2 M * 32 * 56 bytes = 9.0 GiB.
BYTES_PER_VOXEL_PER_WIDTH = 32
BYTES_PER_VOXEL = 128
MEMORY_HEADROOM = 0.8  # use at most this share of the free memory
MIN_SLAB = 16


def _voxels(spatial: Sequence[int]) -> int:
    voxels = 1
    for s in spatial:
        voxels *= int(s)
    return voxels


def sampling_bytes(network: nn.Module, spatial: Sequence[int], tile: Sequence[int] | None = None) -> int:
    """Estimated peak bytes of sampling a (1, 4, *spatial) volume with ``network`` (a ``MedSynUNet``), on the whole
    volume or in tiles of ``tile`` (D, H, W; -1 = whole axis)."""
    width = int(getattr(network, "config", {}).get("width", 64))
    covered = spatial if tile is None else [s if t == -1 else min(int(t), int(s)) for t, s in zip(tile, spatial)]
    return _voxels(spatial) * BYTES_PER_VOXEL + _voxels(covered) * BYTES_PER_VOXEL_PER_WIDTH * width


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's available memory for the CPU."""
    if device.type == "cuda":
        # memory PyTorch's allocator holds but does not use is free for this process
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_tile(network: nn.Module, spatial: Sequence[int], device: torch.device) -> tuple[int, int, int] | None:
    """The super-resolution tile for ``spatial`` on ``device``: None (the whole volume, as the official code runs it)
    when its forward fits in the free memory, else the deepest slab of axial slices (whole H and W) that fits.

    Args:
        network: the super-resolution network.
        spatial: (D, H, W) of the volume.
        device: where it runs.
    """
    budget = MEMORY_HEADROOM * free_memory(torch.device(device))
    if sampling_bytes(network, spatial) <= budget:
        return None
    depth = int(spatial[0])
    slab = depth // 2
    while slab > MIN_SLAB and sampling_bytes(network, spatial, (slab, -1, -1)) > budget:
        slab //= 2
    slab = max(slab, min(MIN_SLAB, depth))
    logger.warning(
        "the whole %s volume needs about %.1f GiB, more than the %.1f GiB free: super-resolution runs in slabs of %d "
        "slices (an approximation of the whole-volume result; pass --sr_tile null to force the whole volume)",
        "x".join(map(str, spatial)),
        sampling_bytes(network, spatial) / 2**30,
        budget / 2**30,
        slab,
    )
    return (slab, -1, -1)


class SlidingWindowNetwork(nn.Module):
    """``network(x, timesteps, context=None)`` evaluated tile by tile with Gaussian-weighted blending of overlaps.

    Args:
        network: the denoiser network; it sees tiles of ``roi_size`` (its own size rules apply to tiles: H and W
            multiples of 2**(levels-1)).
        roi_size: tile size (D, H, W); -1 takes the whole axis. Slabs along D, e.g. (32, -1, -1), keep each
            slice's in-plane attention exact and only split the 3×3×3 blocks' depth context, which overlap covers.
        overlap: fraction of a tile shared with its neighbours, in [0, 1).
        sw_batch_size: tiles per network call.
        mode: ``gaussian`` (smooth blending, no seams) or ``constant``.

    Memory: activations scale with the tile, not the volume; the inputs and the output stay whole.
    """

    def __init__(
        self,
        network: nn.Module,
        roi_size: Sequence[int],
        overlap: float = 0.25,
        sw_batch_size: int = 1,
        mode: str = "gaussian",
    ) -> None:
        super().__init__()
        if len(roi_size) != 3 or any(int(s) == 0 or int(s) < -1 for s in roi_size):
            raise ValueError(f"roi_size must be three positive sizes (or -1 for a whole axis), got {list(roi_size)}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
        self.network = network
        self.roi_size = tuple(int(s) for s in roi_size)
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.mode = mode

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        if x.shape[0] != 1:
            # tiles of different samples would be batched together with one sample's timestep
            return torch.cat(
                [
                    self(x[i : i + 1], timesteps[i : i + 1], None if context is None else context[i : i + 1], **kwargs)
                    for i in range(x.shape[0])
                ]
            )

        def predictor(tiles: torch.Tensor) -> torch.Tensor:
            n = tiles.shape[0]
            ctx = None if context is None else context.expand(n, *context.shape[1:])
            return self.network(tiles, timesteps.expand(n), context=ctx, **kwargs)

        return sliding_window_inference(
            x,
            self.roi_size,
            self.sw_batch_size,
            predictor,
            overlap=self.overlap,
            mode=self.mode,
            progress=False,
        )
