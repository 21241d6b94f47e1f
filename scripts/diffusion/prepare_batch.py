"""Prepare-batch callables for MONAI's ``SupervisedTrainer`` (docs/training.md).

``SupervisedTrainer`` calls ``prepare_batch(batchdata, device, non_blocking, **to_kwargs)``, unpacks
``(inputs, targets, args, kwargs)``, runs ``inferer(inputs, network, *args, **kwargs)`` (the default
``SimpleInferer`` is ``network(inputs, *args, **kwargs)``) and ``loss_function(pred, targets)``. So with these
classes the trainer computes MedSyn's loss, plain MSE between the network's x̂0 and x0, with
``loss_function=torch.nn.MSELoss()`` (or :class:`~scripts.diffusion.losses.MaskedMSELoss`, which also takes the
``(x0, channel_mask)`` targets of ``channel_mask_key``) and no diffusion-specific inferer.

Both classes subclass MONAI's ``DiffusionPrepareBatch`` and keep its hooks (``get_noise``, ``get_timesteps``,
``get_target``), with continuous float timesteps ``t * 1000`` and x0 as the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch

from scripts.conventions import LOWRES_FACTOR

from .conditioning import DEFAULT_CONDITION_NOISE, degrade_for_super_resolution
from .rng import as_generator, rand, randn
from .scheduler import ContinuousDDIMScheduler

DEFAULT_DROP_PROB = 0.1  # MedSyn replaces the report with the null embedding for 10 % of training samples


class ContinuousDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Noise a clean batch at random continuous times: returns ``(x_t, x0, (timesteps,), {})``.

    Args:
        scheduler: provides ``add_noise`` and the time scale; default ``ContinuousDDIMScheduler()``.
        image_key: batch key of the clean volume x0 (B, C, *spatial) in [-1, 1]; default ``"image"``.
        generator: optional int seed or generator for t and the noise (reproducible training draws).
        channel_mask_key: batch key of a (B, C) mask of present channels (text-only data); when given the target
            is ``(x0, channel_mask)`` for :class:`~scripts.diffusion.losses.MaskedMSELoss`. Default None: x0 alone.
    """

    def __init__(
        self,
        scheduler: ContinuousDDIMScheduler | None = None,
        image_key: str = "image",
        generator: int | torch.Generator | None = None,
        channel_mask_key: str | None = None,
    ) -> None:
        self.scheduler = scheduler if scheduler is not None else ContinuousDDIMScheduler()
        super().__init__(num_train_timesteps=self.scheduler.num_train_timesteps, condition_name=None)
        self.image_key = image_key
        self.generator = as_generator(generator)
        self.channel_mask_key = channel_mask_key

    def get_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``images``."""
        return randn(images.shape, generator=self.generator, device=images.device, dtype=images.dtype)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """Float network-unit times ``t * num_train_timesteps`` with ``t ~ U(0, 1)``, shape (B,)."""
        t = rand((images.shape[0],), generator=self.generator, device=images.device)
        return t * self.num_train_timesteps

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The network predicts x0, so the target is the clean batch itself."""
        return images

    def _get(
        self,
        batchdata: Mapping[str, Any],
        key: str,
        device: str | torch.device | None,
        non_blocking: bool,
        **kwargs: Any,
    ) -> torch.Tensor:
        if not isinstance(batchdata, Mapping) or key not in batchdata:
            found = list(batchdata) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise KeyError(f"batch has no key {key!r} (found {found})")
        return batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs)

    def _noised(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None, non_blocking: bool, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, x0, timesteps) for the batch's image."""
        images = self._get(batchdata, self.image_key, device, non_blocking, **kwargs)
        noise = self.get_noise(images)
        timesteps = self.get_timesteps(images)
        x_t = self.scheduler.add_noise(images, noise, timesteps)
        return x_t, self.get_target(images, noise, timesteps), timesteps

    def _loss_target(
        self,
        batchdata: Mapping[str, Any],
        target: torch.Tensor,
        device: str | torch.device | None,
        non_blocking: bool,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``target``, or ``(target, channel_mask)`` when a channel-mask key is set."""
        if self.channel_mask_key is None:
            return target
        return target, self._get(batchdata, self.channel_mask_key, device, non_blocking, **kwargs)

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        """Args ``batchdata``, ``device``, ``non_blocking`` and ``kwargs`` (for ``Tensor.to``) as in Ignite/MONAI."""
        x_t, target, timesteps = self._noised(batchdata, device, non_blocking, **kwargs)
        return x_t, self._loss_target(batchdata, target, device, non_blocking, **kwargs), (timesteps,), {}


class LowResPrepareBatch(ContinuousDiffusionPrepareBatch):
    """Low-resolution stage: noised volume plus text context with random context dropout for guidance.

    Returns ``(x_t, x0, (timesteps,), {"context": tokens, "drop_context": drop})`` so the trainer calls
    ``network(x_t, timesteps, context=tokens, drop_context=drop)``; ``drop`` is a bool (B,) ~ Bernoulli(drop_prob).

    Args:
        scheduler: see :class:`ContinuousDiffusionPrepareBatch`.
        image_key: batch key of x0 (B, 4, D, H, W); default ``"image"``.
        context_key: batch key of the text tokens (B, 192, H); default ``"context"``; None trains unconditionally.
        drop_prob: probability of replacing a sample's context by the null embedding; default 0.1; 0 leaves
            ``drop_context`` out.
        generator: optional int seed or generator for t, the noise and the dropout.
        channel_mask_key: see :class:`ContinuousDiffusionPrepareBatch`.
    """

    def __init__(
        self,
        scheduler: ContinuousDDIMScheduler | None = None,
        image_key: str = "image",
        context_key: str | None = "context",
        drop_prob: float = DEFAULT_DROP_PROB,
        generator: int | torch.Generator | None = None,
        channel_mask_key: str | None = None,
    ) -> None:
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        super().__init__(scheduler, image_key, generator, channel_mask_key)
        self.context_key = context_key
        self.drop_prob = drop_prob

    def get_drop_context(self, images: torch.Tensor) -> torch.Tensor:
        """Bool (B,): True where the context is replaced by the null embedding."""
        return rand((images.shape[0],), generator=self.generator, device=images.device) < self.drop_prob

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x_t, target, timesteps = self._noised(batchdata, device, non_blocking, **kwargs)
        network_kwargs: dict[str, torch.Tensor] = {}
        if self.context_key is not None:
            network_kwargs["context"] = self._get(batchdata, self.context_key, device, non_blocking, **kwargs)
            if self.drop_prob > 0:
                network_kwargs["drop_context"] = self.get_drop_context(x_t)
        return x_t, self._loss_target(batchdata, target, device, non_blocking, **kwargs), (timesteps,), network_kwargs


class SuperResolutionPrepareBatch(ContinuousDiffusionPrepareBatch):
    """Super-resolution stage: the degraded condition made on the fly, concatenated before x_t.

    Returns ``(cat(condition, x_t), x0, (timesteps,), {})``: the condition is the batch's high-res crop after
    nearest ↓factor ↑factor and ``(1 - a) * lr + a * N(0, 1)``, a ~ U(0, max_noise) per sample
    (:func:`.conditioning.degrade_for_super_resolution`).

    Args:
        scheduler: see :class:`ContinuousDiffusionPrepareBatch`.
        image_key: batch key of the high-res crop (B, 4, D, H, W), sizes multiples of ``factor``; default ``"image"``.
        factor: resolution ratio of the two stages; default ``conventions.LOWRES_FACTOR`` (4).
        max_noise: upper bound of the condition's noise level a; default 0.4; 0 disables the augmentation.
        generator: optional int seed or generator for t, the noise and the augmentation.
        channel_mask_key: see :class:`ContinuousDiffusionPrepareBatch`.
    """

    def __init__(
        self,
        scheduler: ContinuousDDIMScheduler | None = None,
        image_key: str = "image",
        factor: int = LOWRES_FACTOR,
        max_noise: float = DEFAULT_CONDITION_NOISE,
        generator: int | torch.Generator | None = None,
        channel_mask_key: str | None = None,
    ) -> None:
        if max_noise < 0:
            raise ValueError(f"max_noise must be >= 0, got {max_noise}")
        super().__init__(scheduler, image_key, generator, channel_mask_key)
        self.factor = factor
        self.max_noise = max_noise

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x_t, target, timesteps = self._noised(batchdata, device, non_blocking, **kwargs)
        condition = degrade_for_super_resolution(target, self.factor, self.max_noise, generator=self.generator)
        loss_target = self._loss_target(batchdata, target, device, non_blocking, **kwargs)
        return torch.cat([condition, x_t], dim=1), loss_target, (timesteps,), {}
