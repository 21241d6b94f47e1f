"""Ignite handlers for the diffusion trainers (attach them like MONAI handlers: ``handler.attach(engine)``).

MONAI's ``SupervisedTrainer`` does accumulation and AMP itself; what it lacks for MedSyn is an EMA copy of the
weights, gradient-norm clipping that respects accumulation and the AMP scaler, and a hard stop on a NaN loss.
"""

from __future__ import annotations

import logging
import math

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers.utils import from_engine
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

logger = logging.getLogger(__name__)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside DistributedDataParallel / DataParallel wrappers."""
    return getattr(network, "module", network)


def optimizer_steps_now(engine: Engine) -> bool:
    """Whether the current iteration ends with an optimizer step (the rule of MONAI's ``SupervisedTrainer``).

    With ``accumulation_steps`` = k the optimizer steps every k-th iteration of an epoch and at the epoch's end.
    """
    k = getattr(engine, "accumulation_steps", 1)
    if k <= 1:
        return True
    epoch_length = engine.state.epoch_length
    if epoch_length is None:
        return engine.state.iteration % k == 0
    local = (engine.state.iteration - 1) % epoch_length + 1
    return local % k == 0 or local == epoch_length


class EMAHandler:
    """Exponential moving average of a network's weights, kept on the side for sampling.

    Before ``start_iteration`` the average simply follows the live weights (as in the official training code),
    afterwards it is updated after every optimizer step as ``ema = decay * ema + (1 - decay) * weights``.

    Args:
        network: the trained network (a DDP wrapper is unwrapped).
        decay: EMA decay per optimizer step, in [0, 1); 0.999 for the low-res stage, 0.995 for super-resolution.
        start_iteration: trainer iteration from which averaging starts.

    The averaged network is ``handler.model``; ``state_dict`` / ``load_state_dict`` make the handler a checkpoint
    entry.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.999, start_iteration: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if start_iteration < 0:
            raise ValueError(f"EMA start_iteration must be >= 0, got {start_iteration}")
        self.network = _unwrap(network)
        self.decay = decay
        self.start_iteration = start_iteration
        self.averaged = AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def model(self) -> torch.nn.Module:
        """The averaged network, same class as the trained one."""
        return self.averaged.module

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not optimizer_steps_now(engine):
            return
        if engine.state.iteration < self.start_iteration:
            self.model.load_state_dict(self.network.state_dict())
        else:
            self.averaged.update_parameters(self.network)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.averaged.load_state_dict(state_dict)


class GradientClipHandler:
    """Clip the global gradient norm before each optimizer step (after unscaling when AMP's scaler is on).

    Args:
        max_norm: largest allowed L2 norm of all gradients together; MedSyn's: 1.0.

    The norm before clipping is stored as ``engine.state.grad_norm`` for logging.
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not optimizer_steps_now(engine):
            return  # gradients are still being accumulated
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)  # clip true gradients, not loss-scaled ones
        norm = torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)
        engine.state.grad_norm = float(norm)


class NaNGuard:
    """Stop training on a NaN or infinite loss with a message naming the iteration.

    Attach it before the checkpoint saver so a broken step is never written to disk.

    Args:
        output_key: where the loss is in ``engine.state.output`` (MONAI's ``Keys.LOSS``).
    """

    def __init__(self, output_key: str = "loss") -> None:
        # MONAI decollates engine outputs into per-sample dicts by default; from_engine reads either form
        self.read_loss = from_engine([output_key], first=True)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.read_loss(engine.state.output)
        if isinstance(loss, (tuple, list)):  # from_engine gives a 1-tuple for a dict output (decollate=False)
            loss = loss[0]
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss is {value} at iteration {engine.state.iteration}; stopped without saving this step "
                "(resume restarts from the last checkpoint: lower the learning rate or check the data)"
            )
