"""Configuration checks run in a training config's ``initialize``: a bad setting fails before any data is loaded or
any step is taken, with one line naming the config id and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from scripts.cli import parse_number
from scripts.engines.data import ConfigError, check_crop
from scripts.networks import PRESETS, STAGES

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Processes in the default process group (1 without ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def per_process_batch(batch_size: int, accumulation_steps: int = 1, processes: int | None = None) -> int:
    """The data loader's batch: the effective batch per optimizer step split over processes and accumulation.

    Args:
        batch_size: samples per optimizer step over all processes (the paper's "effective batch").
        accumulation_steps: iterations accumulated per optimizer step.
        processes: number of processes; default :func:`world_size`.

    Raises:
        ConfigError: when ``batch_size`` is not a multiple of processes × accumulation steps.
    """
    processes = world_size() if processes is None else processes
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"config 'batch_size': expected a positive integer, got {batch_size!r}")
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ConfigError(f"config 'accumulation_steps': expected a positive integer, got {accumulation_steps!r}")
    share = processes * accumulation_steps
    if batch_size % share:
        raise ConfigError(
            f"config 'batch_size': {batch_size} is not divisible by {processes} process(es) x {accumulation_steps} "
            f"accumulation step(s); set --batch_size to a multiple of {share} or change --accumulation_steps"
        )
    return batch_size // share


def check_training_config(
    preset: str,
    stage: str,
    batch_size: int,
    accumulation_steps: int = 1,
    max_epochs: int = 1,
    lr: float = 1e-4,
    amp: bool = False,
    device: torch.device | str = "cpu",
    crop_size: Sequence[int] | None = None,
    size: int | Sequence[int] | None = None,
) -> None:
    """Check the settings a training config exposes; raises :class:`ConfigError` on the first bad one.

    Args:
        preset: network preset name (``scripts.networks.PRESETS``).
        stage: ``lowres`` or ``sr``.
        batch_size, accumulation_steps: see :func:`per_process_batch` (checked against the current world size).
        max_epochs: positive.
        lr: positive learning rate.
        amp: mixed precision; warned about on CPU (bf16 autocast is very slow there).
        device: the training device.
        crop_size, size: super-resolution crop and volume size (:func:`scripts.engines.data.check_crop`).
    """
    if preset not in PRESETS:
        raise ConfigError(f"config 'preset': unknown network preset {preset!r}; use one of {sorted(PRESETS)}")
    if stage not in STAGES:
        raise ConfigError(f"config 'stage': unknown stage {stage!r}; use one of {list(STAGES)}")
    per_process_batch(batch_size, accumulation_steps)
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(f"config 'max_epochs': expected a positive integer, got {max_epochs!r}")
    try:
        finite_lr = parse_number(lr, "lr")
    except ValueError:
        finite_lr = 0.0
    if not finite_lr > 0:  # NaN, inf and text are refused here, not found as a NaN loss later
        raise ConfigError(f"config 'lr': expected a positive finite learning rate, got {lr!r}")
    if amp and torch.device(device).type == "cpu":
        logger.warning("amp is on but the device is the CPU: autocast there is much slower than float32 (--amp false)")
    if stage == "sr" and crop_size is not None:
        check_crop(crop_size, size)


def check_context_width(network: torch.nn.Module, hidden_size: int | None, encoder: str = "") -> None:
    """The low-res network's text width must equal the text encoder's hidden size.

    Args:
        network: the network (a DDP wrapper is unwrapped); networks without text (``context_dim`` None) pass.
        hidden_size: the encoder's hidden size (``EmbeddingCache.encoder.hidden_size``), or None without text.
        encoder: the encoder's name, for the message.
    """
    network = getattr(network, "module", network)
    width = getattr(network, "context_dim", None)
    if width is None and getattr(network, "null_context", None) is not None:
        width = int(network.null_context.shape[-1])
    if width is None or hidden_size is None:
        return
    if int(width) != int(hidden_size):
        raise ConfigError(
            f"config 'network_overrides': the network's context_dim {width} differs from the text encoder "
            f"{encoder or ''} hidden size {hidden_size}; set --network_overrides \"{{'context_dim': {hidden_size}}}\" "
            "or choose a matching --text_model / --preset"
        )


__all__ = ["check_context_width", "check_training_config", "per_process_batch", "world_size"]
