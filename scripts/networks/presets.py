"""Named network sizes: a registry of (low-res, super-resolution) :class:`MedSynUNet` configurations.

A new size is one :func:`register_preset` call; :func:`build_network` is the one public way to build a network
from a name. Parameter counts (float32):

================  ===================================  ==========================================
preset            lowres (64³, text)                   sr (256³, no text)
================  ===================================  ==========================================
``paper``         716,215,684 (d=160, H=768, 8 heads)  54,307,908 (d=56, 8→4 channels, 4 heads)
``small``         2,360,356 (d=8, H=384, 4 heads)      287,188 (d=4, 3³ stem, 2 heads)
``tiny``          1,866,788 (d=8, H=32, 2 heads)       1,144,388 (d=8, 2 heads; tests)
================  ===================================  ==========================================
"""

from __future__ import annotations

from typing import Any

from .unet import MedSynUNet

__all__ = ["STAGES", "PRESETS", "register_preset", "preset_config", "build_network", "parameter_counts"]

STAGES = ("lowres", "sr")

PRESETS: dict[str, dict[str, dict[str, Any]]] = {}


def register_preset(name: str, lowres: dict[str, Any], sr: dict[str, Any]) -> None:
    """Add a named pair of :class:`MedSynUNet` keyword arguments (one per stage) to :data:`PRESETS`."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    PRESETS[name] = {"lowres": dict(lowres), "sr": dict(sr)}


# The official MedSyn models (docs/official_weights.md): text from CXR-BERT (768), 4 channels CT/lobe/airway/vessel.
register_preset(
    "paper",
    lowres=dict(
        in_channels=4,
        out_channels=4,
        width=160,
        width_mults=(1, 2, 4, 8),
        context_dim=768,
        attn_heads=8,
        attn_head_dim=32,
        norm_groups=8,
    ),
    sr=dict(
        in_channels=8,
        out_channels=4,
        width=56,
        width_mults=(1, 2, 4, 8),
        context_dim=None,
        attn_heads=4,
        attn_head_dim=32,
        norm_groups=8,
    ),
)

# CPU-sized: text from all-MiniLM-L6-v2 (384). Widths are set by what two CPU cores can do (measured on the project
# machines, shared, so times vary 2-4x; docs/benchmarks.md): low-res d=8, a 64³ training step 1.7-7.5 s, 1.7-1.9 GB.
# Super-resolution d=4 with a 3³ stem: at 256³ every channel of the first level is a 64 MiB tensor and the 7³ stem
# alone would cost as much as the rest of the network; a 128³ forward takes 4-8 s, so 256³ ~30-60 s per step.
register_preset(
    "small",
    lowres=dict(
        in_channels=4,
        out_channels=4,
        width=8,
        width_mults=(1, 2, 4, 8),
        context_dim=384,
        attn_heads=4,
        attn_head_dim=32,
        norm_groups=8,
    ),
    sr=dict(
        in_channels=8,
        out_channels=4,
        width=4,
        width_mults=(1, 2, 4, 8),
        context_dim=None,
        attn_heads=2,
        attn_head_dim=32,
        norm_groups=4,
        stem_kernel=3,
    ),
)

# For tests: the smallest layout that still has every kind of block.
register_preset(
    "tiny",
    lowres=dict(
        in_channels=4,
        out_channels=4,
        width=8,
        width_mults=(1, 2, 4, 8),
        context_dim=32,
        attn_heads=2,
        attn_head_dim=32,
        norm_groups=8,
    ),
    sr=dict(
        in_channels=8,
        out_channels=4,
        width=8,
        width_mults=(1, 2, 4, 8),
        context_dim=None,
        attn_heads=2,
        attn_head_dim=32,
        norm_groups=8,
    ),
)


def preset_config(preset: str, stage: str) -> dict[str, Any]:
    """The :class:`MedSynUNet` keyword arguments of a preset and stage (a copy)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; valid presets: {sorted(PRESETS)}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {list(STAGES)}")
    return dict(PRESETS[preset][stage])


def build_network(preset: str, stage: str, **overrides: Any) -> MedSynUNet:
    """Build the ``stage`` ("lowres" or "sr") network of a registered preset.

    Args:
        preset: a name in :data:`PRESETS` ("paper", "small", "tiny").
        stage: "lowres" (text-conditioned, 64³) or "sr" (super-resolution, no text).
        overrides: :class:`MedSynUNet` keyword arguments replacing the preset's (e.g. ``use_checkpointing=True``).

    Build under ``with torch.device("meta"):`` to inspect a large network without allocating it.
    """
    return MedSynUNet(**{**preset_config(preset, stage), **overrides})


def parameter_counts(preset: str) -> dict[str, int]:
    """Unique parameter counts of both stages of a preset (built on the meta device: no memory)."""
    import torch

    counts = {}
    for stage in STAGES:
        with torch.device("meta"):
            net = build_network(preset, stage)
        counts[stage] = sum(p.numel() for p in net.parameters())
    return counts
