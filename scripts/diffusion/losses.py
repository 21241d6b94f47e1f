"""The training loss: MSE between the network's x̂0 and x0, over the channels each sample has.

Text-only data (``allow_missing_masks``) has no lobe / airway / vessel maps for some cases: the transforms fill them
with background and mark them in ``channel_mask`` (B, C). Training those channels toward background would teach
the model to erase anatomy, so the prepare-batch can hand the mask on with the target (``channel_mask_key``) and
this loss then averages only over the present channels. Without a mask it is ``torch.nn.MSELoss()``.

``channel_weights`` weighs each channel's mean squared error (CT, lobe, airway, vessel). The official loss is plain
MSE (the default, and what the ``paper`` preset trains with). Thin structures make a sparse channel: airway and
vessels cover well under 1 % of a 64³ volume, so under plain MSE a model that never draws them loses almost
nothing; raising their weights makes missing them cost as much as a wrong CT.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Target = torch.Tensor | Sequence[torch.Tensor]


class MaskedMSELoss(nn.Module):
    """Mean squared error over the present channels, optionally weighted per channel.

    ``forward(pred, target)``:

    - ``pred``: (B, C, *spatial) network output;
    - ``target``: x0 of the same shape (plain MSE), or ``(x0, channel_mask)`` with ``channel_mask`` (B, C), 1 for a
      present channel and 0 for a missing one; the mean runs over present channel voxels (all present = MSE).

    Args:
        channel_weights: C non-negative weights, not all 0; the loss is then the weighted mean of the per-channel
            mean squared errors (over present channels). None (default): every channel weighs 1, which is MSE.
    """

    def __init__(self, channel_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        weights = None
        if channel_weights is not None:
            weights = torch.as_tensor(channel_weights, dtype=torch.float32)
            if weights.ndim != 1 or not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"channel_weights must be one finite weight >= 0 per channel, not all 0, got {list(channel_weights)}"
                )
        self.register_buffer("channel_weights", weights, persistent=False)

    def forward(self, pred: torch.Tensor, target: Target) -> torch.Tensor:
        if isinstance(target, torch.Tensor):
            if self.channel_weights is None:
                return F.mse_loss(pred, target)
            target = (target, torch.ones(pred.shape[:2], device=pred.device))
        x0, channel_mask = target
        if x0.shape != pred.shape:
            raise ValueError(f"target shape {list(x0.shape)} differs from the prediction's {list(pred.shape)}")
        if tuple(channel_mask.shape) != tuple(pred.shape[:2]):
            raise ValueError(
                f"channel_mask must have shape (B, C) = {list(pred.shape[:2])}, got {list(channel_mask.shape)}"
            )
        weight = channel_mask.to(pred.dtype)
        if self.channel_weights is not None:
            if len(self.channel_weights) != pred.shape[1]:
                raise ValueError(
                    f"channel_weights has {len(self.channel_weights)} weights, the prediction {pred.shape[1]} channels"
                )
            weight = weight * self.channel_weights.to(weight)
        weight = weight.reshape(*channel_mask.shape, *(1,) * (pred.ndim - 2))
        voxels = pred[0, 0].numel()
        present = weight.sum() * voxels
        if present == 0:
            raise ValueError(
                "every channel of the batch is marked missing in channel_mask (or weighs 0): nothing to learn from"
            )
        return ((pred - x0).square() * weight).sum() / present

    @staticmethod
    def batch_size(target: Target) -> int:
        """Samples in a target (for ``ignite.metrics.Loss(batch_size=...)``)."""
        return len(target if isinstance(target, torch.Tensor) else target[0])


__all__ = ["MaskedMSELoss"]
