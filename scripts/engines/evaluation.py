"""Pieces that make the validation loss of a diffusion model a comparable number.

A diffusion loss depends on the random times and noise drawn for each sample. The validation evaluator therefore
uses a prepare-batch with its own generator, reseeded by :class:`ReseedEachRun` at the start of every evaluation:
every validation (of this run or another with the same seed and data) scores the model on the same noisy inputs.
:class:`TrainerIteration` lets MONAI's evaluator-side loggers put these numbers at the trainer's iteration.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events


class ReseedEachRun:
    """Reseed a prepare-batch's generator when an evaluator starts, so each evaluation draws the same t and noise.

    Args:
        prepare_batch: an object with a ``generator`` attribute (``scripts.diffusion`` prepare-batches).
        seed: the seed set at every run.
    """

    def __init__(self, prepare_batch: object, seed: int = 0) -> None:
        generator = getattr(prepare_batch, "generator", None)
        if not isinstance(generator, torch.Generator):
            raise ValueError("ReseedEachRun needs a prepare-batch built with a generator (e.g. generator=0)")
        self.generator, self.seed = generator, int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.generator.manual_seed(self.seed)


class TrainerIteration:
    """The trainer's current iteration as a ``global_epoch_transform`` for evaluator loggers.

    Validation runs every K iterations, so several evaluations fall in one trainer epoch; logging them at the
    trainer's iteration keeps their TensorBoard points apart. Attach it to the trainer (``attach``) and pass the
    object as ``global_epoch_transform`` of the evaluator's ``TensorBoardStatsHandler``.
    """

    def __init__(self) -> None:
        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine

    def __call__(self, epoch: int) -> int:
        return self.trainer.state.iteration if self.trainer is not None else epoch


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` of an evaluator whose key metric is a loss: MONAI's default keeps the highest value as best."""
    return current < best


__all__ = ["ReseedEachRun", "TrainerIteration", "lower_is_better"]
