"""Building blocks of the MedSyn denoiser (docs/official_weights.md), one idea per class.

Every block takes and returns volumes laid out as (B, C, D, H, W): D runs over slices and is never resampled;
the per-slice blocks (kernels (1, 3, 3), attention over the H·W tokens of each slice) act on H and W only, and
the ``volumetric`` residual blocks (3×3×3 kernels) are the only ones that mix neighbouring slices.

Parameter shapes equal those of the official MedSyn checkpoints (so `official.py` is a table of renames and
never reshapes a tensor); the names are ours.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "Checkpointable",
    "SinusoidalEmbedding",
    "TimeEmbedding",
    "ConvNormAct",
    "ResBlock",
    "downsample_hw",
    "upsample_hw",
    "ChannelLayerNorm",
    "SpatialSelfAttention",
    "TextCrossAttention",
]

SLICE_KERNEL = (1, 3, 3)
VOLUME_KERNEL = (3, 3, 3)


class Checkpointable(nn.Module):
    """A block that can recompute its activations in the backward pass instead of storing them.

    Setting ``checkpointing = True`` (done by ``MedSynUNet.use_checkpointing``) makes each call with gradients
    enabled run through ``torch.utils.checkpoint``. This lives in ``__call__``, not in ``forward``, so ``forward``
    stays plain: TorchScript compiles ``forward`` alone and a scripted network never checkpoints.
    """

    checkpointing = False  # no annotation: TorchScript cannot resolve string annotations of class attributes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar per sample: ``[sin(t·f_k), cos(t·f_k)]``, f_k = 10000^(-k/(dim/2 - 1)).

    Args:
        dim: number of output features (even).

    Shapes: (B,) → (B, dim).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"sinusoidal embedding width must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        # the official code spaces the frequencies by half - 1 (not half): keep it, the weights depend on it
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimeEmbedding(nn.Module):
    """Diffusion time → conditioning: sinusoidal(dim) → Linear(dim, 4·dim) → GELU → Linear(4·dim, 4·dim).

    Args:
        dim: network base width d; the output has ``4 * dim`` features.

    Shapes: (B,) float time (t·1000) → (B, 4·dim).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.sinusoid = SinusoidalEmbedding(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, 4 * dim)

    @property
    def out_features(self) -> int:
        return self.fc2.out_features

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.sinusoid(t))))


class ConvNormAct(nn.Module):
    """Conv3d → GroupNorm → optional FiLM ``x·(scale+1)+shift`` → SiLU.

    Args:
        in_channels: input channels.
        out_channels: output channels (a multiple of ``groups``).
        groups: GroupNorm groups.
        volumetric: False: kernel (1, 3, 3), each slice alone; True: kernel (3, 3, 3), mixes neighbouring slices.

    Shapes: (B, in, D, H, W) → (B, out, D, H, W); scale and shift are (B, out, 1, 1, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, volumetric: bool) -> None:
        super().__init__()
        kernel = VOLUME_KERNEL if volumetric else SLICE_KERNEL
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, padding=tuple(k // 2 for k in kernel))
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResBlock(Checkpointable):
    """Residual block of two :class:`ConvNormAct`, the first modulated by the time embedding (FiLM).

    Args:
        in_channels: input channels.
        out_channels: output channels; a 1×1×1 conv matches the residual when they differ.
        time_dim: width of the time embedding, or None for a block without time (the output head).
        groups: GroupNorm groups.
        volumetric: 3×3×3 kernels (the official ``ResnetBlock3d``) instead of per-slice (1, 3, 3) kernels.

    Shapes: (B, in, D, H, W), time (B, time_dim) → (B, out, D, H, W).
    """

    def __init__(
        self, in_channels: int, out_channels: int, time_dim: int | None, groups: int, volumetric: bool = False
    ) -> None:
        super().__init__()
        self.time_proj = nn.Linear(time_dim, 2 * out_channels) if time_dim is not None else None
        self.conv1 = ConvNormAct(in_channels, out_channels, groups, volumetric)
        self.conv2 = ConvNormAct(out_channels, out_channels, groups, volumetric)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.time_proj is not None:
            if time_emb is None:
                raise ValueError("this ResBlock is time-conditioned: pass time_emb of shape (B, time_dim)")
            scale, shift = self.time_proj(F.silu(time_emb))[:, :, None, None, None].chunk(2, dim=1)
            scale_shift = (scale, shift)
        h = self.conv2(self.conv1(x, scale_shift))
        return h + self.skip(x)


def downsample_hw(channels: int) -> nn.Conv3d:
    """Halve H and W (kernel (1, 4, 4), stride (1, 2, 2)); slices are never downsampled."""
    return nn.Conv3d(channels, channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))


def upsample_hw(channels: int) -> nn.ConvTranspose3d:
    """Double H and W (transposed kernel (1, 4, 4), stride (1, 2, 2)): the inverse layout of :func:`downsample_hw`."""
    return nn.ConvTranspose3d(channels, channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, D, H, W) volume: gain only, no bias, population variance.

    Args:
        channels: C.
        eps: added to the variance.

    The gain keeps the official (1, C, 1, 1, 1) shape so checkpoints load without reshaping.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in float32: under fp16 autocast the variance of wide bottleneck features loses precision
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=1, unbiased=False, keepdim=True)
        return ((xf - mean) * torch.rsqrt(var + self.eps) * self.gain.float()).to(x.dtype)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, heads·hd) → (N, heads, L, hd); the official layout is head-major ``(h d)``."""
    n, length, inner = x.shape
    return x.view(n, length, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, hd) → (N, L, heads·hd)."""
    n, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * head_dim)


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention among the H·W positions of each slice, no positional encoding.

    Args:
        channels: C.
        heads: attention heads.
        head_dim: features per head (32 in MedSyn).

    Shapes: (B, C, D, H, W) → (B, C, D, H, W) (the attention output only; the caller adds the residual).
    Attention runs through ``scaled_dot_product_attention`` so fused kernels (flash / memory-efficient) apply.
    """

    def __init__(self, channels: int, heads: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b * d, h * w, c)  # one sequence per slice
        # a list comprehension, not a generator: TorchScript compiles only the former
        q, k, v = [_split_heads(part, self.heads) for part in self.to_qkv(tokens).chunk(3, dim=-1)]
        out = self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return out.view(b, d, h, w, c).permute(0, 4, 1, 2, 3)


class TextCrossAttention(nn.Module):
    """Multi-head cross-attention from every voxel of every slice to the text tokens.

    Args:
        channels: C of the volume.
        context_dim: H, width of the text token features.
        heads: attention heads.
        head_dim: features per head (32 in MedSyn).

    Shapes: x (B, C, D, H, W), context (B, T, context_dim) → (B, C, D, H, W) (the caller adds the residual).
    The query and output projections are 1×1 Conv2d over each slice as in the official checkpoints.
    """

    def __init__(self, channels: int, context_dim: int, heads: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Conv2d(channels, inner, 1, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        slices = x.transpose(1, 2).reshape(b * d, c, h, w)
        q = self.to_q(slices)  # (B·D, inner, H, W)
        inner = q.shape[1]
        # Every slice attends to the same text tokens, so the D·H·W queries of a sample share one key/value set:
        # one attention call per sample instead of copying the text D times (which the official code does).
        q = q.view(b, d, inner, h * w).permute(0, 1, 3, 2).reshape(b, d * h * w, inner)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(
            _split_heads(q, self.heads), _split_heads(k, self.heads), _split_heads(v, self.heads)
        )
        out = _merge_heads(out).view(b * d, h, w, inner).permute(0, 3, 1, 2)
        out = self.to_out(out)  # (B·D, C, H, W)
        return out.view(b, d, c, h, w).transpose(1, 2)
