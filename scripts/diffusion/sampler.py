"""The DDIM sampling loop (docs/training.md), k-diffusion style.

The loop knows only a denoiser callable ``denoise(x_t, timesteps) -> x̂0`` (see :mod:`.denoisers`) and a
scheduler; text conditioning, guidance, fixed channels and super-resolution are wrappers around the denoiser, so
this one loop serves every use without a flag. The DDIM maths lives in :meth:`ContinuousDDIMScheduler.step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .denoisers import Denoiser
from .rng import as_generator, randn
from .scheduler import ContinuousDDIMScheduler


class SamplerStep(NamedTuple):
    """What a sampling callback receives after each step.

    Attributes:
        index: step number, 0 for the first (noisiest) step.
        timestep: network-unit time the denoiser was evaluated at (0-d tensor).
        next_timestep: network-unit time of ``sample`` (0-d tensor; 0 after the last step).
        sample: x at ``next_timestep``, shape (B, C, *spatial).
        pred_original_sample: the clipped x̂0 of this step, shape (B, C, *spatial).
    """

    index: int
    timestep: torch.Tensor
    next_timestep: torch.Tensor
    sample: torch.Tensor
    pred_original_sample: torch.Tensor


@torch.no_grad()
def ddim_sample_loop(
    denoise: Denoiser,
    noise: torch.Tensor,
    num_inference_steps: int = 50,
    scheduler: ContinuousDDIMScheduler | None = None,
    progress: bool = True,
    callback: Callable[[SamplerStep], None] | None = None,
) -> torch.Tensor:
    """Run the scheduler's deterministic sampler (DDIM by default) from the starting noise x_1 down to t = 0.

    Args:
        denoise: ``denoise(x_t, timesteps) -> x̂0`` with x_t (B, C, *spatial) and timesteps (B,) float in network
            units (``t * 1000``).
        noise: x at t = 1, shape (B, C, *spatial); the result is a deterministic function of it.
        num_inference_steps: number of steps, >= 1; 50 for MedSyn's low-res stage, 20 for super-resolution. The
            denoiser runs once per step (once more, at t = 0, with a scheduler made with ``set_alpha_to_one=False``).
        scheduler: the scheduler holding the DDIM maths; default ``ContinuousDDIMScheduler()`` (cosine, clip to
            [-1, 1]). Its grid is reset by this call.
        progress: show a tqdm progress bar.
        callback: called with a :class:`SamplerStep` after every step (e.g. to keep intermediates).

    Returns:
        the final x̂0, shape of ``noise``.
    """
    scheduler = scheduler if scheduler is not None else ContinuousDDIMScheduler()
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    pairs = list(zip(scheduler.timesteps, scheduler.next_timesteps))
    x = noise
    for i, (t, t_next) in enumerate(tqdm(pairs, desc=scheduler.display_name, disable=not progress, leave=False)):
        x0_hat = denoise(x, t.expand(x.shape[0]))
        x, x0_hat = scheduler.step(x0_hat, t, x, t_next)
        if callback is not None:
            callback(SamplerStep(i, t, t_next, x, x0_hat))
    return x


def sample_ddim(
    denoise: Denoiser,
    shape: Sequence[int],
    num_inference_steps: int = 50,
    generator: int | torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    scheduler: ContinuousDDIMScheduler | None = None,
    progress: bool = True,
    callback: Callable[[SamplerStep], None] | None = None,
) -> torch.Tensor:
    """Draw starting noise of ``shape`` and run :func:`ddim_sample_loop`.

    The same seed (or a generator in the same state) with the same denoiser gives the same output on the same
    device. The noise is drawn on the generator's device (an int seed makes a CPU generator) and moved to ``device``.

    Args:
        denoise: ``denoise(x_t, timesteps) -> x̂0`` (see :func:`ddim_sample_loop`).
        shape: (B, C, *spatial) of the samples, e.g. (1, 4, 64, 64, 64).
        num_inference_steps: number of DDIM steps, >= 1.
        generator: an int seed, a ``torch.Generator``, or None for torch's global RNG.
        device: device of the samples (default CPU).
        dtype: floating dtype of the samples.
        scheduler: see :func:`ddim_sample_loop`.
        progress: show a tqdm progress bar.
        callback: see :func:`ddim_sample_loop`.

    Returns:
        samples of ``shape``, values in the scheduler's clip range.
    """
    if len(shape) < 3:
        raise ValueError(f"shape must be (B, C, *spatial), got {tuple(shape)}")
    noise = randn(shape, generator=as_generator(generator), device=device, dtype=dtype)
    return ddim_sample_loop(denoise, noise, num_inference_steps, scheduler, progress, callback)
