"""Inference weights at the end of training: the EMA network's state dict and a JSON describing it.

Files, written atomically into the run's ``output_dir`` (``<stage>`` is ``lowres`` or ``sr``)::

    <stage>_ema.pt     torch.save of the EMA network's state_dict (float32 tensors, no "module." prefix)
    <stage>_ema.json   {"format", "stage", "preset", "network": MedSynUNet kwargs, "text_encoder", "iteration", ...}

Load them with :func:`load_exported`: ``MedSynUNet(**meta["network"])`` then ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from scripts.data.io import atomic_path, write_json

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "medsyn-monai-weights/1"


def export_paths(output_dir: str | os.PathLike, stage: str) -> tuple[Path, Path]:
    """``(<output_dir>/<stage>_ema.pt, <output_dir>/<stage>_ema.json)``."""
    return Path(output_dir) / f"{stage}_ema.pt", Path(output_dir) / f"{stage}_ema.json"


def export_weights(
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    stage: str,
    preset: str,
    iteration: int,
    text_encoder: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``network``'s weights and description (see the module docstring); returns the two paths.

    Args:
        network: a ``MedSynUNet`` (DDP wrappers unwrapped), usually ``EMAHandler.model``.
        output_dir: destination folder.
        stage: ``lowres`` or ``sr``.
        preset: the preset the network was built from (recorded; ``network`` holds the exact kwargs).
        iteration: the trainer iteration of these weights.
        text_encoder: for stage 1, the encoder the network was trained with (``model_id``, ``hidden_size``, ...).
        extra: more fields for the JSON (e.g. EMA decay).
    """
    network = getattr(network, "module", network)
    weights, meta_path = export_paths(output_dir, stage)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in network.state_dict().items()}
    with atomic_path(weights, overwrite=True) as tmp:
        torch.save(state, tmp)
    meta = {
        "format": EXPORT_FORMAT,
        "stage": stage,
        "preset": preset,
        "network": network.config,
        "text_encoder": text_encoder,
        "iteration": int(iteration),
        "weights": weights.name,
        **(extra or {}),
    }
    write_json(meta_path, meta, overwrite=True)
    logger.info(f"exported EMA weights of iteration {iteration}: {weights} and {meta_path.name}")
    return weights, meta_path


def load_exported(
    meta_path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild an exported network: returns ``(MedSynUNet with the weights loaded strictly, meta dict)``."""
    import json

    from scripts.networks import MedSynUNet

    meta_path = Path(meta_path)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {EXPORT_FORMAT!r}")
    network = MedSynUNet(**meta["network"])
    state = torch.load(meta_path.parent / meta["weights"], map_location=map_location, weights_only=True)
    network.load_state_dict(state, strict=True)
    return network, meta


class ExportEMA:
    """Export the EMA network when the trainer completes (see :func:`export_weights` for the arguments).

    Args:
        ema: the ``EMAHandler`` (its ``model`` is exported).
        output_dir, stage, preset, text_encoder: as in :func:`export_weights`.
    """

    def __init__(self, ema: Any, output_dir: str | os.PathLike, stage: str, preset: str,
                 text_encoder: dict[str, Any] | None = None) -> None:
        self.ema, self.output_dir, self.stage, self.preset = ema, output_dir, stage, preset
        self.text_encoder = text_encoder

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        extra = {"ema_decay": self.ema.decay, "ema_start_iteration": self.ema.start_iteration}
        export_weights(self.ema.model, self.output_dir, self.stage, self.preset, engine.state.iteration,
                       self.text_encoder, extra)


def encoder_description(cache: Any) -> dict[str, Any] | None:
    """What stage 1 needs to know about its text encoder, from the filled ``EmbeddingCache`` (None without text)."""
    if cache is None:
        return None
    encoder = cache.encoder
    return {"model_id": encoder.model_id, "hidden_size": encoder.hidden_size, "max_tokens": encoder.max_tokens,
            "context_tokens": encoder.context_tokens, "cache_key": cache.key}




def checkpoint_items(
    network: torch.nn.Module,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    trainer: Engine,
    lr_scheduler: Any | None = None,
    rng: Any | None = None,
) -> dict[str, Any]:
    """The objects a training checkpoint holds: ``network`` (unwrapped), ``ema``, ``optimizer``, ``lr_scheduler``
    (when given), ``scaler`` (when the trainer uses AMP), ``trainer`` (iteration, epoch) and ``rng``."""
    items: dict[str, Any] = {"network": getattr(network, "module", network), "ema": ema, "optimizer": optimizer}
    if lr_scheduler is not None:
        items["lr_scheduler"] = lr_scheduler
    if getattr(trainer, "amp", False) and getattr(trainer, "scaler", None) is not None:
        items["scaler"] = trainer.scaler
    items["trainer"] = trainer
    if rng is not None:
        items["rng"] = rng
    return items


__all__ = [
    "EXPORT_FORMAT",
    "ExportEMA",
    "checkpoint_items",
    "encoder_description",
    "export_paths",
    "export_weights",
    "load_exported",
]
