"""Official MedSyn checkpoints → :class:`MedSynUNet` (docs/official_weights.md).

The official state dicts (batmanlab/MedSyn ``Unet3D``; key lists in tests/data/official/*_state_dict.tsv) hold the
same tensors as ours under other names. The mapping is a table of module prefixes (:func:`_prefix_table`) and,
per kind of module, a table of parameter names (``_RESBLOCK``, ``_CONV`` ...): no tensor is reshaped.
Loading is all or nothing: any missing, unexpected or mis-shaped key, or shared attention copies that differ,
fails with one :class:`OfficialCheckpointError` that lists every problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .unet import MedSynUNet

__all__ = [
    "OfficialCheckpointError",
    "HEAD_DIM",
    "strip_prefixes",
    "drop_schedule_buffers",
    "SCHEDULE_BUFFERS",
    "official_to_config",
    "official_key_map",
    "convert_official_state_dict",
    "from_official_state_dict",
    "infer_official_kwargs",
]

HEAD_DIM = 32  # the official attention always uses 32 features per head, whatever attn_dim_head says
# added by multi-GPU wrapping (DDP), torch.compile, EMA wrappers and the official GaussianDiffusion wrapper
PREFIXES = ("module.", "_orig_mod.", "ema_model.", "ema.", "denoise_fn.")
# Buffers the official GaussianDiffusion of the first training scripts registers (a discrete schedule:
# training/video_diffusion_pytorch_low_res_continuous_time_improve_unet_seg.py:794-836 of batmanlab/MedSyn at
# 303a29d); a checkpoint of it holds them beside the network. The continuous-time sampler never reads them.
SCHEDULE_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "ddim_sigmas",
        "ddim_alphas",
        "ddim_alphas_prev",
        "ddim_sqrt_one_minus_alphas",
        "ddim_sigmas_for_original_num_steps",
    }
)
# official constructor arguments that the official network ignores (or that do not change its layout)
IGNORED_KWARGS = frozenset(
    {
        "attn_dim_head",
        "use_bert_text_cond",
        "init_dim",
        "init_kernel_size",
        "use_sparse_linear_attn",
        "block_type",
        "total_slices",
    }
)


class OfficialCheckpointError(ValueError):
    """The state dict is not a complete official MedSyn checkpoint of the requested layout."""


# --- parameter names inside one module: ours → official -------------------------------------------------------
_CONV = {"weight": "weight", "bias": "bias"}
_RESBLOCK_NO_TIME = {
    "conv1.conv.weight": "block1.proj.weight",
    "conv1.conv.bias": "block1.proj.bias",
    "conv1.norm.weight": "block1.norm.weight",
    "conv1.norm.bias": "block1.norm.bias",
    "conv2.conv.weight": "block2.proj.weight",
    "conv2.conv.bias": "block2.proj.bias",
    "conv2.norm.weight": "block2.norm.weight",
    "conv2.norm.bias": "block2.norm.bias",
    "skip.weight": "res_conv.weight",  # only when the block changes width
    "skip.bias": "res_conv.bias",
}
_RESBLOCK = {"time_proj.weight": "mlp.1.weight", "time_proj.bias": "mlp.1.bias", **_RESBLOCK_NO_TIME}
_TIME_EMBED = {"fc1.weight": "1.weight", "fc1.bias": "1.bias", "fc2.weight": "3.weight", "fc2.bias": "3.bias"}
_NORM = {"gain": "gamma"}
_SELF_ATTN = {"to_qkv.weight": "to_qkv.weight", "to_out.weight": "to_out.weight"}
_CROSS_ATTN = {
    "to_q.weight": "to_q.weight",
    "to_kv.weight": "to_kv.weight",
    "to_out.weight": "to_out.weight",
    "to_out.bias": "to_out.bias",
}

# Slots of the per-level module lists. The super-resolution model has six slots whose 2 and 3 hold no weights.
_LEVEL_SLOTS = {
    "lowres": {"res1": 0, "res2": 1, "res3d": 2, "resample": 3},
    "sr": {"res1": 0, "res2": 1, "res3d": 4, "resample": 5},
}


def _prefix_table(stage: str, num_levels: int, depth: int) -> list[tuple[str, tuple[str, ...], dict[str, str]]]:
    """Rows (our module prefix, official prefixes, parameter-name table) covering a whole network.

    A row with several official prefixes is one of our tensors stored several times in the official checkpoint
    (the bottleneck self-attention shared by the four low-res units).
    """
    lowres = stage == "lowres"
    slots = _LEVEL_SLOTS[stage]
    rows: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
        ("stem", ("init_conv" if lowres else "init_conv0",), _CONV),
        ("time_embed", ("time_mlp",), _TIME_EMBED),
    ]
    for i in range(num_levels):
        rows += [
            (f"encoder.{i}.res1", (f"downs.{i}.{slots['res1']}",), _RESBLOCK),
            (f"encoder.{i}.res2", (f"downs.{i}.{slots['res2']}",), _RESBLOCK),
            (f"encoder.{i}.res3d", (f"downs.{i}.{slots['res3d']}",), _RESBLOCK),
            (f"encoder.{i}.down", (f"downs.{i}.{slots['resample']}",), _CONV),
            (f"decoder.{i}.res1", (f"ups.{i}.{slots['res1']}",), _RESBLOCK),
            (f"decoder.{i}.res2", (f"ups.{i}.{slots['res2']}",), _RESBLOCK),
            (f"decoder.{i}.res3d", (f"ups.{i}.{slots['res3d']}",), _RESBLOCK),
            (f"decoder.{i}.up", (f"ups.{i}.{slots['resample']}",), _CONV),
        ]
    rows += [("bottleneck.res_in", ("mid_block1",), _RESBLOCK), ("bottleneck.res_out", ("mid_block2",), _RESBLOCK)]
    if lowres:
        units = [str(u + 1) for u in range(depth)]  # official names count from 1: mid_spatial_attn1..4
        rows.append(("bottleneck.self_attn", tuple(f"mid_spatial_attn{u}.fn.fn.fn" for u in units), _SELF_ATTN))
        for u, name in enumerate(units):
            rows += [
                (f"bottleneck.units.{u}.attn_norm", (f"mid_spatial_attn{name}.fn.norm",), _NORM),
                (f"bottleneck.units.{u}.cross_norm", (f"mid_cross_attn{name}.fn.norm",), _NORM),
                (f"bottleneck.units.{u}.cross_attn", (f"mid_cross_attn{name}.fn.fn",), _CROSS_ATTN),
                (f"bottleneck.units.{u}.res3d", (f"mid_temporal_attn{name}",), _RESBLOCK),
            ]
    else:
        if depth != 1:
            raise OfficialCheckpointError(f"the official super-resolution model has one bottleneck unit, not {depth}")
        rows += [
            ("bottleneck.self_attn", ("mid_spatial_attn.fn.fn.fn",), _SELF_ATTN),
            ("bottleneck.units.0.attn_norm", ("mid_spatial_attn.fn.norm",), _NORM),
            ("bottleneck.units.0.res3d", ("mid_temporal_conv",), _RESBLOCK),
        ]
    head = "final_conv" if lowres else "final_conv0"
    rows += [("head.res", (f"{head}.0",), _RESBLOCK_NO_TIME), ("head.out", (f"{head}.1",), _CONV)]
    return rows


def official_key_map(model: MedSynUNet, stage: str) -> dict[str, tuple[str, ...]]:
    """Our state-dict key → the official key(s) holding the same tensor, for every tensor of ``model``."""
    _check_stage(stage)
    cfg = model.config
    rows = _prefix_table(stage, len(cfg["width_mults"]), cfg["bottleneck_depth"])
    mapping: dict[str, tuple[str, ...]] = {}
    if model.null_context is not None:
        mapping["null_context"] = ("null_cond_emb",)
    for ours, theirs, names in rows:
        for our_name, their_name in names.items():
            key = f"{ours}.{our_name}"
            mapping[key] = tuple(f"{prefix}.{their_name}" for prefix in theirs)
    # keep only tensors the model has (e.g. ``skip`` exists only where a block changes width)
    own = set(model.state_dict().keys())
    mapping = {k: v for k, v in mapping.items() if k in own}
    unmapped = own - mapping.keys()
    if unmapped:  # a network layout the official code cannot produce
        raise OfficialCheckpointError(f"no official name for our parameters {sorted(unmapped)}")
    return mapping


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefixes :data:`PREFIXES` (``module.``, ``_orig_mod.``, ``ema_model.``, ``ema.``,
    ``denoise_fn.``, in any order) from every key."""
    out: dict[str, torch.Tensor] = {}
    for original, value in state_dict.items():
        key, stripped = original, True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if key in out:  # e.g. a live and an EMA copy in one file: which one is meant is not ours to guess
            raise OfficialCheckpointError(f"two keys name {key} once their wrapper prefixes are removed ({original})")
        out[key] = value
    return out


def drop_schedule_buffers(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict without the official diffusion wrapper's :data:`SCHEDULE_BUFFERS`, and the names dropped."""
    plain = strip_prefixes(state_dict)
    kept = {k: v for k, v in plain.items() if k not in SCHEDULE_BUFFERS}
    return kept, sorted(k for k in plain if k in SCHEDULE_BUFFERS)


def _check_stage(stage: str) -> None:
    if stage not in _LEVEL_SLOTS:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {sorted(_LEVEL_SLOTS)}")


def official_to_config(
    stage: str,
    dim: int,
    cond_dim: int | None = None,
    dim_mults: Sequence[int] = (1, 2, 4, 8),
    channels: int = 4,
    attn_heads: int = 8,
    resnet_groups: int = 8,
    **ignored: Any,
) -> dict[str, Any]:
    """Official ``Unet3D`` constructor arguments → :class:`MedSynUNet` keyword arguments.

    The super-resolution network reads ``2 * channels`` (upsampled low-res volume, noisy volume) and has no text,
    whatever ``cond_dim`` says; the low-res network needs ``cond_dim``.
    """
    _check_stage(stage)
    unknown = set(ignored) - IGNORED_KWARGS
    if unknown:
        raise TypeError(f"unknown official arguments {sorted(unknown)}")
    if stage == "lowres" and cond_dim is None:
        raise ValueError("the official low-res model needs cond_dim (text width, 768 for CXR-BERT)")
    return dict(
        in_channels=channels if stage == "lowres" else 2 * channels,
        out_channels=channels,
        width=dim,
        width_mults=tuple(dim_mults),
        context_dim=cond_dim if stage == "lowres" else None,
        attn_heads=attn_heads,
        attn_head_dim=HEAD_DIM,
        norm_groups=resnet_groups,
        bottleneck_depth=4 if stage == "lowres" else 1,
        stem_kernel=7,
    )


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: MedSynUNet, stage: str
) -> dict[str, torch.Tensor]:
    """Official state dict (prefixes allowed) → a complete state dict for ``model``; raises on any mismatch.

    Raises:
        OfficialCheckpointError: listing missing, unexpected and mis-shaped keys and shared-attention copies that
            differ, all at once.
    """
    official = strip_prefixes(state_dict)
    mapping = official_key_map(model, stage)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {their: ours for ours, theirs in mapping.items() for their in theirs}

    # a tensor stored under several names (the shared attention) counts once: safetensors writers such as newer
    # accelerate keep one name per shared storage
    missing = sorted(
        k for ours, theirs in mapping.items() if not any(t in official for t in theirs) for k in theirs[:1]
    )
    unexpected = sorted(k for k in official if k not in expected)
    misshaped = sorted(
        f"{k}: checkpoint {tuple(official[k].shape)}, expected {shapes[ours]}"
        for k, ours in expected.items()
        if k in official and tuple(official[k].shape) != shapes[ours]
    )
    untied = []
    converted: dict[str, torch.Tensor] = {}
    for ours, theirs in mapping.items():
        present = [official[k] for k in theirs if k in official]
        if not present:
            continue
        first = present[0]
        if any(t.shape != first.shape or not torch.equal(t, first) for t in present[1:]):
            untied.append(f"{' / '.join(theirs)} should be one shared tensor but differ")
        converted[ours] = first

    problems = []
    for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", misshaped),
        ("not tied", untied),
    ):
        if items:
            problems.append(f"{title} ({len(items)}): " + ", ".join(items))
    if problems:
        raise OfficialCheckpointError(
            f"not a complete official MedSyn {stage} checkpoint for this layout: " + "; ".join(problems)
        )
    return converted


def from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], stage: str, decoder_upsample_last: bool = False, **official_kwargs: Any
) -> MedSynUNet:
    """Build the :class:`MedSynUNet` described by the official constructor arguments and load the official weights.

    Args:
        state_dict: official weights; keys may carry the wrapper prefixes of :func:`strip_prefixes`.
        stage: "lowres" or "sr".
        decoder_upsample_last: build the decoder in the official inference scripts' order (upsample after the last
            block of each level) instead of the training order the weights were trained with.
        official_kwargs: the official ``Unet3D`` arguments (dim, cond_dim, dim_mults, channels, attn_heads,
            resnet_groups); arguments the official network ignores (attn_dim_head, use_bert_text_cond, init_dim,
            init_kernel_size, use_sparse_linear_attn, block_type) are accepted and ignored.
            See :func:`infer_official_kwargs` to read them from the tensor shapes.

    Raises:
        OfficialCheckpointError: the weights do not fit completely (nothing is loaded partially).
    """
    model = MedSynUNet(**official_to_config(stage, **official_kwargs), decoder_upsample_last=decoder_upsample_last)
    model.load_state_dict(convert_official_state_dict(state_dict, model, stage), strict=True)
    return model


def infer_official_kwargs(state_dict: Mapping[str, torch.Tensor], stage: str) -> dict[str, Any]:
    """Read the official constructor arguments from tensor shapes (``resnet_groups`` cannot be read: 8 assumed).

    dim from the stem, channels from the output conv, cond_dim from the null text embedding, dim_mults from the
    first conv of each encoder level, attn_heads from the bottleneck self-attention (32 features per head).
    """
    _check_stage(stage)
    sd = strip_prefixes(state_dict)
    lowres = stage == "lowres"
    stem, head, attn = (
        ("init_conv.weight", "final_conv.1.weight", "mid_spatial_attn1.fn.fn.fn.to_qkv.weight")
        if lowres
        else ("init_conv0.weight", "final_conv0.1.weight", "mid_spatial_attn.fn.fn.fn.to_qkv.weight")
    )
    other = "sr" if lowres else "lowres"
    if stem not in sd:
        alt = "init_conv0.weight" if lowres else "init_conv.weight"
        hint = f" (it has {alt}: a {other} checkpoint? use stage {other!r})" if alt in sd else ""
        raise OfficialCheckpointError(f"no {stem} in the checkpoint: not an official MedSyn {stage} model{hint}")
    needed = [head, attn] + (["null_cond_emb"] if lowres else [])
    absent = [k for k in needed if k not in sd]
    if absent:
        raise OfficialCheckpointError(f"cannot infer the layout, missing keys: {absent}")
    dim = sd[stem].shape[0]
    mults = []
    while f"downs.{len(mults)}.0.block1.proj.weight" in sd:
        mults.append(sd[f"downs.{len(mults)}.0.block1.proj.weight"].shape[0] // dim)
    if not mults:
        raise OfficialCheckpointError("cannot infer the layout: no downs.<i>.0.block1.proj.weight keys")
    kwargs: dict[str, Any] = dict(
        dim=dim,
        dim_mults=tuple(mults),
        channels=sd[head].shape[0],
        attn_heads=sd[attn].shape[0] // (3 * HEAD_DIM),
        resnet_groups=8,
    )
    if lowres:
        kwargs["cond_dim"] = sd["null_cond_emb"].shape[-1]
    return kwargs
