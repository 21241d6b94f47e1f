"""The training loss: MSE between the network's x̂0 and x0, over the channels each sample has.

Text-only data (``allow_missing_masks``) has no lobe / airway / vessel maps for some cases: the transforms fill them
with background and mark them in ``channel_mask`` (B, C). Training those channels toward background would teach
the model to erase anatomy, so the prepare-batch can hand the mask on with the target (``channel_mask_key``) and
this loss then averages only over the present channels. Without a mask it is ``torch.nn.MSELoss()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Target = torch.Tensor | Sequence[torch.Tensor]


class MaskedMSELoss(nn.Module):
    """Mean squared error over the present channels.

    ``forward(pred, target)``:

    - ``pred``: (B, C, *spatial) network output;
    - ``target``: x0 of the same shape (plain MSE), or ``(x0, channel_mask)`` with ``channel_mask`` (B, C), 1 for a
      present channel and 0 for a missing one; the mean runs over present channel voxels (all present = MSE).
    """

    def forward(self, pred: torch.Tensor, target: Target) -> torch.Tensor:
        if isinstance(target, torch.Tensor):
            return F.mse_loss(pred, target)
        x0, channel_mask = target
        if x0.shape != pred.shape:
            raise ValueError(f"target shape {list(x0.shape)} differs from the prediction's {list(pred.shape)}")
        if tuple(channel_mask.shape) != tuple(pred.shape[:2]):
            raise ValueError(
                f"channel_mask must have shape (B, C) = {list(pred.shape[:2])}, got {list(channel_mask.shape)}"
            )
        weight = channel_mask.to(pred.dtype).reshape(*channel_mask.shape, *(1,) * (pred.ndim - 2))
        voxels = pred[0, 0].numel()
        present = weight.sum() * voxels
        if present == 0:
            raise ValueError("every channel of the batch is marked missing in channel_mask: nothing to learn from")
        return ((pred - x0).square() * weight).sum() / present

    @staticmethod
    def batch_size(target: Target) -> int:
        """Samples in a target (for ``ignite.metrics.Loss(batch_size=...)``)."""
        return len(target if isinstance(target, torch.Tensor) else target[0])


__all__ = ["MaskedMSELoss"]
