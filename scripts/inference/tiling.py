"""Run a denoiser network over overlapping tiles (MONAI ``sliding_window_inference``) to bound memory.

The wrapper has the network's own call signature, so the diffusion denoisers and the sampler use it unchanged:
``SuperResolutionDenoiser(SlidingWindowNetwork(sr_net, roi_size=(64, -1, -1)), condition)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn


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
