"""Inference weights at the end of training: the EMA network in the bundle's weights format.

Files, written atomically into the run's ``output_dir`` (``<stage>`` is ``lowres`` or ``sr``), in the format of
:mod:`scripts.networks.weights` that inference loads (``--lowres_weights`` / ``--sr_weights``)::

    <stage>_ema.pt     the EMA network's state dict (float32, no "module." prefix)
    <stage>_ema.json   {"stage", "network": MedSynUNet kwargs, "preset", "text_encoder" (name for ReportEncoder),
                        "text_encoder_info", "data" (model grid: spacing, size, size_mode), "conventions",
                        "iteration", ...}

Load them with :func:`scripts.networks.load_network`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from scripts.conventions import ModelConventions, get_conventions
from scripts.engines.checkpoint import ResumeFromLatest
from scripts.engines.distributed import is_rank_zero
from scripts.networks.weights import description_path, read_description, save_network

logger = logging.getLogger(__name__)


def export_paths(output_dir: str | os.PathLike, stage: str) -> tuple[Path, Path]:
    """``(<output_dir>/<stage>_ema.pt, <output_dir>/<stage>_ema.json)``."""
    weights = Path(output_dir) / f"{stage}_ema.pt"
    return weights, description_path(weights)


def export_weights(
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    stage: str,
    preset: str,
    iteration: int,
    text_encoder: str | None = None,
    text_encoder_info: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    conventions: str | ModelConventions | None = None,
) -> tuple[Path, Path]:
    """Write ``network``'s weights and description (see the module docstring); returns the two paths.

    Args:
        network: a ``MedSynUNet`` (DDP wrappers unwrapped), usually ``EMAHandler.model``.
        output_dir: destination folder.
        stage: ``lowres`` or ``sr``.
        preset: the preset the network was built from (recorded; ``network`` holds the exact kwargs).
        iteration: the trainer iteration of these weights.
        text_encoder: for stage 1, the encoder name or folder the features came from (``ReportEncoder`` argument).
        text_encoder_info: its details (``model_id``, ``hidden_size``, ...), from :func:`encoder_description`.
        data: the model grid of the training data (``spacing``, ``size``, ``size_mode``), which inference reuses.
        extra: more fields for the JSON (e.g. EMA decay).
        conventions: the conventions the network was trained with (recorded; default this bundle's).
    """
    network = getattr(network, "module", network)
    weights, meta_path = export_paths(output_dir, stage)
    save_network(
        weights,
        network,
        network.config,
        stage,
        overwrite=True,  # the newest export of this run replaces the last
        preset=preset,
        text_encoder=text_encoder,
        text_encoder_info=text_encoder_info,
        data=data,
        conventions=get_conventions(conventions).as_dict(),
        iteration=int(iteration),
        **(extra or {}),
    )
    logger.info(f"exported EMA weights of iteration {iteration}: {weights} and {meta_path.name}")
    return weights, meta_path


class ExportEMA:
    """Export the EMA network when the trainer completes (see :func:`export_weights` for the arguments).

    Only rank 0 writes (in a multi-process run every rank builds this handler; the others skip it). Calling it
    with an engine exports at once (:func:`export_latest` does so for a checkpoint) and returns the two paths.

    Args:
        ema: the ``EMAHandler`` (its ``model`` is exported).
        output_dir, stage, preset, text_encoder, text_encoder_info, data, conventions: as in :func:`export_weights`.
        started_from: the ``init_weights`` the run started from, or "": recorded as ``started_from`` (file name and
            the iterations behind it), so a fine-tuned export tells how much training it holds in all.
    """

    def __init__(
        self,
        ema: Any,
        output_dir: str | os.PathLike,
        stage: str,
        preset: str,
        text_encoder: str | None = None,
        text_encoder_info: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        started_from: str | os.PathLike = "",
        conventions: str | ModelConventions | None = None,
    ) -> None:
        self.ema, self.output_dir, self.stage, self.preset = ema, output_dir, stage, preset
        self.conventions = get_conventions(conventions)
        self.text_encoder, self.text_encoder_info, self.data = text_encoder, text_encoder_info, data
        self.provenance = {"ema_decay": ema.decay, "ema_start_iteration": ema.start_iteration}
        if started_from:
            earlier = read_description(started_from)
            self.provenance["started_from"] = {
                "weights": Path(started_from).name,
                "iteration": earlier.get("iteration"),
                **({"started_from": earlier["started_from"]} if "started_from" in earlier else {}),
            }

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> tuple[Path, Path] | None:
        if not is_rank_zero():
            return None
        return export_weights(
            self.ema.model,
            self.output_dir,
            self.stage,
            self.preset,
            engine.state.iteration,
            self.text_encoder,
            self.text_encoder_info,
            self.data,
            self.provenance,
            self.conventions,
        )


def export_latest(
    load_dir: str | os.PathLike,
    load_dict: dict[str, Any],
    trainer: Engine,
    exporter: ExportEMA,
    map_location: Any = None,
) -> tuple[Path, Path]:
    """Export the EMA network of the newest checkpoint in ``load_dir`` without training (the ``export`` run).

    A long run can be sampled from at any time: ``python -m monai.bundle run export`` with the training command's
    settings loads the newest checkpoint into the objects of ``load_dict`` and writes ``<stage>_ema.pt`` / ``.json``
    as the end of the run would.

    Raises:
        FileNotFoundError: ``load_dir`` holds no checkpoint (one line naming it).
    """
    loader = ResumeFromLatest(load_dir, load_dict, map_location=map_location)
    if loader.found is None:
        raise FileNotFoundError(f"no checkpoint in {load_dir}: train first, with the same --output_dir")
    # nothing is trained here: a checkpoint past the command's max_epochs (the config default) still exports
    trainer.state.max_epochs = None
    loader(trainer)
    paths = exporter(trainer)
    if paths is None:
        raise RuntimeError("export runs in one process: start it without torchrun")
    return paths


def encoder_description(cache: Any) -> dict[str, Any] | None:
    """What stage 1 needs to know about its text encoder, from the filled ``EmbeddingCache`` (None without text)."""
    if cache is None:
        return None
    encoder = cache.encoder
    return {
        "model_id": encoder.model_id,
        "hidden_size": encoder.hidden_size,
        "max_tokens": encoder.max_tokens,
        "context_tokens": encoder.context_tokens,
        "text_input": encoder.text_input,
        "cache_key": cache.key,
    }


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


__all__ = ["ExportEMA", "checkpoint_items", "encoder_description", "export_latest", "export_paths", "export_weights"]
