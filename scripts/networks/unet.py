"""The MedSyn denoiser: one UNet for both stages (docs/official_weights.md), assembled from `blocks.py`.

Low resolution (text-conditioned, 64³): ``context_dim`` set, bottleneck of four units of
[per-slice self-attention (one shared set of weights, own norm gains), cross-attention to the text,
volumetric ResBlock]. Super-resolution (256³): ``context_dim=None``, bottleneck of one unit
[self-attention, volumetric ResBlock]. Attention appears only in the bottleneck, where H and W are smallest:
this is what keeps the memory of a 3D diffusion network low.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .blocks import (
    ChannelLayerNorm,
    Checkpointable,
    ResBlock,
    SpatialSelfAttention,
    TextCrossAttention,
    TimeEmbedding,
    downsample_hw,
    upsample_hw,
)

__all__ = ["EncoderLevel", "DecoderLevel", "BottleneckUnit", "Bottleneck", "OutputHead", "MedSynUNet"]


class EncoderLevel(Checkpointable):
    """ResBlock(in→out), ResBlock(out), keep the skip, halve H and W (all but the last level), volumetric ResBlock.

    Args:
        in_channels: channels entering the level.
        out_channels: channels of the level.
        time_dim: width of the time embedding.
        groups: GroupNorm groups.
        downsample: False for the deepest level.

    Shapes: (B, in, D, H, W) → ((B, out, D, H', W'), skip (B, out, D, H, W)), H' = H/2 when downsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.res1 = ResBlock(in_channels, out_channels, time_dim, groups)
        self.res2 = ResBlock(out_channels, out_channels, time_dim, groups)
        self.down = downsample_hw(out_channels) if downsample else nn.Identity()
        self.res3d = ResBlock(out_channels, out_channels, time_dim, groups, volumetric=True)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.res2(self.res1(x, time_emb), time_emb)
        skip = x
        return self.res3d(self.down(x), time_emb), skip


class DecoderLevel(Checkpointable):
    """Concatenate the skip, ResBlock(2·out→in), double H and W (all but the last level), ResBlock(in), volumetric
    ResBlock(in): the order of the official training scripts (``src/train_low_res.py:576-581``).

    With ``upsample_last`` the level doubles H and W after its three blocks instead, as the official *inference*
    scripts do (``src/eval_low_res_given_prompt.py:576-581``, ``src/eval_super_res.py:553-560``): the same
    parameters, another function (docs/official_weights.md).

    Args:
        in_channels: channels the level returns (the encoder level's input width).
        out_channels: channels of the matching encoder level (of ``x`` and of the skip).
        time_dim: width of the time embedding.
        groups: GroupNorm groups.
        upsample: False for the shallowest level.
        upsample_last: upsample after the last block (official inference order) instead of after the first.

    Shapes: x and skip (B, out, D, H, W) → (B, in, D, H', W'), H' = 2H when upsampling.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        groups: int,
        upsample: bool,
        upsample_last: bool = False,
    ) -> None:
        super().__init__()
        self.res1 = ResBlock(2 * out_channels, in_channels, time_dim, groups)
        self.up = upsample_hw(in_channels) if upsample else nn.Identity()
        self.res2 = ResBlock(in_channels, in_channels, time_dim, groups)
        self.res3d = ResBlock(in_channels, in_channels, time_dim, groups, volumetric=True)
        self.upsample_last = upsample_last

    def forward(self, x: torch.Tensor, skip: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        x = self.res1(torch.cat((x, skip), dim=1), time_emb)
        if self.upsample_last:
            return self.up(self.res3d(self.res2(x, time_emb), time_emb))
        return self.res3d(self.res2(self.up(x), time_emb), time_emb)


@torch.jit.interface
class VolumeModule(nn.Module):
    """The argument type of a module passed to another's forward (the shared self-attention): TorchScript checks a
    module argument against an interface, so networks of different widths script in one process."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, D, H, W) → (B, C, D, H, W)
        pass  # an interface body must be exactly `pass`


class BottleneckUnit(Checkpointable):
    """Pre-norm self-attention (weights passed in, so units can share them), optional pre-norm text
    cross-attention, volumetric ResBlock.

    Args:
        channels: bottleneck width C.
        time_dim: width of the time embedding.
        groups: GroupNorm groups.
        context_dim: text width H, or None for a unit without cross-attention.
        heads: cross-attention heads.
        head_dim: features per head.

    Shapes: (B, C, D, H, W), time (B, time_dim), context (B, T, H) or None → (B, C, D, H, W).
    """

    def __init__(
        self, channels: int, time_dim: int, groups: int, context_dim: int | None, heads: int, head_dim: int
    ) -> None:
        super().__init__()
        self.attn_norm = ChannelLayerNorm(channels)
        if context_dim is not None:
            self.cross_norm = ChannelLayerNorm(channels)
            self.cross_attn = TextCrossAttention(channels, context_dim, heads, head_dim)
        else:
            self.cross_norm = self.cross_attn = None
        self.res3d = ResBlock(channels, channels, time_dim, groups, volumetric=True)

    def forward(
        self,
        x: torch.Tensor,
        time_emb: torch.Tensor,
        context: torch.Tensor | None,
        self_attn: VolumeModule,
    ) -> torch.Tensor:
        x = x + self_attn.forward(self.attn_norm(x))  # TorchScript calls a module argument only through forward
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this bottleneck unit attends to text: pass context of shape (B, tokens, H)")
            x = x + self.cross_attn(self.cross_norm(x), context)
        return self.res3d(x, time_emb)


class Bottleneck(nn.Module):
    """ResBlock, ``depth`` × :class:`BottleneckUnit` sharing one :class:`SpatialSelfAttention`, ResBlock.

    Args:
        channels: bottleneck width C.
        time_dim: width of the time embedding.
        groups: GroupNorm groups.
        context_dim: text width H, or None (super-resolution: no cross-attention).
        heads: attention heads.
        head_dim: features per head.
        depth: number of units (MedSyn: 4 low-res, 1 super-resolution).
    """

    def __init__(
        self,
        channels: int,
        time_dim: int,
        groups: int,
        context_dim: int | None,
        heads: int,
        head_dim: int,
        depth: int,
    ) -> None:
        super().__init__()
        self.res_in = ResBlock(channels, channels, time_dim, groups)
        # one module, used by every unit: the official model reuses a single attention four times
        self.self_attn = SpatialSelfAttention(channels, heads, head_dim)
        self.units = nn.ModuleList(
            BottleneckUnit(channels, time_dim, groups, context_dim, heads, head_dim) for _ in range(depth)
        )
        self.res_out = ResBlock(channels, channels, time_dim, groups)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """(B, C, D, H, W) → (B, C, D, H, W)."""
        x = self.res_in(x, time_emb)
        for unit in self.units:
            x = unit(x, time_emb, context, self.self_attn)
        return self.res_out(x, time_emb)


class OutputHead(Checkpointable):
    """Concatenate the stem features, ResBlock(2d→d) without time, 1×1×1 conv to the output channels."""

    def __init__(self, width: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.res = ResBlock(2 * width, width, None, groups)
        self.out = nn.Conv3d(width, out_channels, 1)

    def forward(self, x: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        return self.out(self.res(torch.cat((x, stem), dim=1)))


class MedSynUNet(nn.Module):
    """MedSyn denoiser predicting x0 from a noisy volume, the diffusion time and (low-res) report text.

    Args:
        in_channels: input channels (low-res: 4; super-resolution: 8 = upsampled low-res volume then noisy volume).
        out_channels: predicted channels (4: CT, lobe, airway, vessel).
        width: base width d (channels of the stem and of the first level); the time embedding has 4·d features.
        width_mults: per-level multipliers of ``width``; ``len(width_mults)`` levels, H and W halved between them.
        context_dim: text token width H, or None for a network without text (super-resolution).
        text_tokens: number of text tokens (192): the shape of the learned null embedding.
        attn_heads: attention heads in the bottleneck.
        attn_head_dim: features per head.
        norm_groups: GroupNorm groups (must divide every width).
        bottleneck_depth: bottleneck units; None → 4 with text, 1 without (MedSyn's two models).
        stem_kernel: odd kernel size of the cubic stem convolution (MedSyn: 7).
        decoder_upsample_last: each decoder level upsamples after its last block, the order of the official inference
            scripts, instead of after its first (the training order, default). See :class:`DecoderLevel`.
        use_checkpointing: recompute each level / bottleneck unit in the backward pass to save memory.

    Forward: see :meth:`forward`. ``forward`` is TorchScript-compatible (``torch.jit.script``) and exports with
    ``torch.export`` (scripts/networks/export.py); checkpointing applies to eager training only.
    """

    # properties TorchScript must not compile (Python-only values)
    __jit_unused_properties__ = ["config", "use_checkpointing"]

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        width: int = 160,
        width_mults: Sequence[int] = (1, 2, 4, 8),
        context_dim: int | None = 768,
        text_tokens: int = 192,
        attn_heads: int = 8,
        attn_head_dim: int = 32,
        norm_groups: int = 8,
        bottleneck_depth: int | None = None,
        stem_kernel: int = 7,
        decoder_upsample_last: bool = False,
        use_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        width_mults = tuple(int(m) for m in width_mults)
        if bottleneck_depth is None:
            bottleneck_depth = 4 if context_dim is not None else 1
        widths = [width * m for m in width_mults]
        if not width_mults or min(width_mults) < 1:
            raise ValueError(f"width_mults must be a non-empty sequence of positive ints, got {width_mults}")
        if any(c % norm_groups for c in [width, *widths]):
            raise ValueError(
                f"norm_groups={norm_groups} must divide every level width {[width, *widths]}; "
                "change width or norm_groups"
            )
        if stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd, got {stem_kernel}")
        self._config = dict(  # no annotation: TorchScript warns about annotated attributes in __init__
            in_channels=in_channels,
            out_channels=out_channels,
            width=width,
            width_mults=list(width_mults),
            context_dim=context_dim,
            text_tokens=text_tokens,
            attn_heads=attn_heads,
            attn_head_dim=attn_head_dim,
            norm_groups=norm_groups,
            bottleneck_depth=bottleneck_depth,
            stem_kernel=stem_kernel,
            decoder_upsample_last=bool(decoder_upsample_last),
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.context_dim, self.text_tokens = context_dim, text_tokens
        self.num_levels = len(widths)

        self.stem = nn.Conv3d(in_channels, width, stem_kernel, padding=stem_kernel // 2)
        self.time_embed = TimeEmbedding(width)
        time_dim = self.time_embed.out_features
        # learned "no text" tokens: used when context is None and for samples dropped for classifier-free guidance
        self.null_context = nn.Parameter(torch.randn(1, text_tokens, context_dim)) if context_dim is not None else None

        level_io = list(zip([width, *widths[:-1]], widths))
        last = self.num_levels - 1
        self.encoder = nn.ModuleList(
            EncoderLevel(cin, cout, time_dim, norm_groups, downsample=i < last)
            for i, (cin, cout) in enumerate(level_io)
        )
        self.bottleneck = Bottleneck(
            widths[-1], time_dim, norm_groups, context_dim, attn_heads, attn_head_dim, bottleneck_depth
        )
        self.decoder = nn.ModuleList(
            DecoderLevel(cin, cout, time_dim, norm_groups, upsample=i < last, upsample_last=bool(decoder_upsample_last))
            for i, (cin, cout) in enumerate(reversed(level_io))
        )
        self.head = OutputHead(width, out_channels, norm_groups)
        self.use_checkpointing = use_checkpointing

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (without ``use_checkpointing``): ``MedSynUNet(**net.config)`` rebuilds the layout."""
        return dict(self._config)

    @property
    def hw_multiple(self) -> int:
        """H and W must be multiples of this (2 ** (levels - 1))."""
        return 1 << (self.num_levels - 1)  # an int also under TorchScript, where int ** int is a float

    @property
    def use_checkpointing(self) -> bool:
        """Recompute each level, bottleneck block and the head in the backward pass (eager mode only)."""
        return self.head.checkpointing

    @use_checkpointing.setter
    def use_checkpointing(self, value: bool) -> None:
        b = self.bottleneck
        for block in [*self.encoder, b.res_in, *b.units, b.res_out, *self.decoder, self.head]:
            block.checkpointing = bool(value)

    # --- input handling --------------------------------------------------------------------------------------

    def _check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        # shapes are printed as lists: TorchScript has no tuple(list)
        if x.ndim != 5:
            raise ValueError(f"x must be (B, C, D, H, W), got shape {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the network takes in_channels={self.in_channels}")
        m = self.hw_multiple
        if x.shape[3] % m or x.shape[4] % m:
            raise ValueError(
                f"H and W must be multiples of {m} for {self.num_levels} levels, got {list(x.shape[3:])}: "
                "pad or crop the volume"
            )
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if timesteps.ndim != 1 or timesteps.shape[0] != x.shape[0]:
            raise ValueError(f"timesteps must have shape (B,)=({x.shape[0]},), got {list(timesteps.shape)}")
        return timesteps.float()

    def _resolve_context(
        self, batch: int, context: torch.Tensor | None, drop_context: torch.Tensor | None
    ) -> torch.Tensor | None:
        null_context = self.null_context  # a local, so TorchScript can tell None from a tensor
        if null_context is None:
            if context is not None:
                raise ValueError("this network has no text conditioning (context_dim=None): pass context=None")
            return None  # drop_context is a no-op without text
        null = null_context.expand(batch, -1, -1)
        if context is None:
            return null
        expected = [batch, self.text_tokens, null_context.shape[2]]
        if list(context.shape) != expected:
            raise ValueError(f"context must have shape (B, tokens, H)={expected}, got {list(context.shape)}")
        if drop_context is None:
            return context
        drop_context = torch.as_tensor(drop_context, device=context.device)
        if drop_context.ndim != 1 or drop_context.shape[0] != batch or drop_context.dtype != torch.bool:
            raise ValueError(
                f"drop_context must be a bool tensor of shape ({batch},), got "
                f"{drop_context.dtype} {list(drop_context.shape)}"
            )
        return torch.where(drop_context[:, None, None], null.to(context.dtype), context)

    # --- forward -------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        drop_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict x0.

        Args:
            x: noisy volume (B, in_channels, D, H, W); H and W multiples of :attr:`hw_multiple`.
            timesteps: (B,) float diffusion time t·1000 (a 0-d tensor is broadcast over the batch).
            context: text tokens (B, text_tokens, context_dim), or None for the learned null embedding for the
                whole batch. Must be None for a network without text.
            drop_context: optional bool (B,): True replaces that sample's context by the null embedding
                (classifier-free-guidance training). Ignored by a network without text.

        Returns:
            x0 prediction (B, out_channels, D, H, W).
        """
        timesteps = self._check_inputs(x, timesteps)
        context = self._resolve_context(x.shape[0], context, drop_context)
        time_emb = self.time_embed(timesteps)

        x = self.stem(x)
        stem = x
        skips: list[torch.Tensor] = []
        for level in self.encoder:
            x, skip = level(x, time_emb)
            skips.append(skip)

        x = self.bottleneck(x, time_emb, context)
        for level in self.decoder:
            x = level(x, skips.pop(), time_emb)
        return self.head(x, stem)
