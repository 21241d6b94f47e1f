"""The super-resolution condition (docs/training.md): nearest-neighbour resampling by ``LOWRES_FACTOR`` and the
training-time degradation of a high-resolution crop.

At inference the condition is ``upsample_nearest(lowres_output)``; in training it is made on the fly from the
high-res target by :func:`degrade_for_super_resolution`, so the network learns to undo the ×4 nearest-neighbour
loss plus some noise (which makes it tolerant of the low-res stage's imperfect outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scripts.conventions import LOWRES_FACTOR

from .rng import rand, randn

DEFAULT_CONDITION_NOISE = 0.4  # a ~ U(0, 0.4) in lr = (1 - a) * lr + a * N(0, 1)


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")


def downsample_nearest(x: torch.Tensor, factor: int = LOWRES_FACTOR) -> torch.Tensor:
    """Nearest-neighbour downsampling by striding: keeps voxels 0, f, 2f, ... of every spatial axis.

    Args:
        x: (B, C, *spatial) with every spatial size a multiple of ``factor``.
        factor: integer factor, default ``conventions.LOWRES_FACTOR`` (4).

    Returns:
        (B, C, *(spatial / factor)), a view of ``x``.
    """
    _check_factor(factor)
    spatial = tuple(x.shape[2:])
    if not spatial or any(size % factor for size in spatial):
        raise ValueError(f"spatial shape {spatial} must be non-empty multiples of factor {factor}")
    return x[(slice(None), slice(None)) + (slice(None, None, factor),) * len(spatial)]


def upsample_nearest(x: torch.Tensor, factor: int = LOWRES_FACTOR) -> torch.Tensor:
    """Nearest-neighbour upsampling: every voxel becomes a ``factor``-sized block (the SR condition at inference).

    Args:
        x: (B, C, *spatial), 1 to 3 spatial axes.
        factor: integer factor, default ``conventions.LOWRES_FACTOR`` (4).

    Returns:
        (B, C, *(spatial * factor)).
    """
    _check_factor(factor)
    if not 3 <= x.ndim <= 5:
        raise ValueError(f"expected (B, C, *spatial) with 1-3 spatial axes, got shape {tuple(x.shape)}")
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def degrade_for_super_resolution(
    x: torch.Tensor,
    factor: int = LOWRES_FACTOR,
    max_noise: float = DEFAULT_CONDITION_NOISE,
    noise_level: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training condition from a high-res target: nearest ↓factor then ↑factor, then ``(1 - a) * lr + a * N(0, 1)``.

    Args:
        x: high-res volume (B, C, *spatial), spatial sizes multiples of ``factor``.
        factor: resampling factor, default 4.
        max_noise: ``a ~ U(0, max_noise)`` per sample; default 0.4; 0 gives the plain ↓↑ volume.
        noise_level: optional fixed ``a`` of shape (B,) (overrides ``max_noise``), e.g. for tests or evaluation.
        generator: optional random generator for ``a`` and the noise.

    Returns:
        the condition, shape and dtype of ``x``.
    """
    if max_noise < 0:
        raise ValueError(f"max_noise must be >= 0, got {max_noise}")
    lowres = upsample_nearest(downsample_nearest(x, factor), factor)
    batch = x.shape[0]
    if noise_level is None:
        noise_level = rand((batch,), generator=generator, device=x.device, dtype=x.dtype) * max_noise
    elif noise_level.shape != (batch,):
        raise ValueError(f"noise_level must have shape ({batch},), got {tuple(noise_level.shape)}")
    a = noise_level.to(device=x.device, dtype=x.dtype).reshape(batch, *([1] * (x.ndim - 1)))
    noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (1.0 - a) * lowres + a * noise
