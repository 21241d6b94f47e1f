"""Seedable random draws shared by the sampler, the conditioning helpers and the prepare-batch classes.

A ``torch.Generator`` draws on its own device, so every draw here happens on the generator's device and then moves
to the requested one: the same seed gives the same numbers whatever device the result lives on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_generator(
    seed: int | torch.Generator | None, device: str | torch.device | None = None
) -> torch.Generator | None:
    """Turn a seed into a generator; pass a generator (or ``None``, the global RNG) through unchanged.

    Args:
        seed: an int seed, an existing generator, or None.
        device: device of a generator created from an int (default CPU, reproducible across machines).
    """
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}")
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(seed)


def _draw(fn, shape: Sequence[int], generator, device, dtype) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    out = fn(tuple(shape), generator=generator, device=draw_device, dtype=dtype)
    return out.to(device) if device is not None else out


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draw of ``shape`` on ``device`` (drawn on the generator's device when one is given)."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) draw of ``shape`` on ``device`` (drawn on the generator's device when one is given)."""
    return _draw(torch.rand, shape, generator, device, dtype)
