"""Continuous-time noise schedules (docs/training.md).

Time ``t`` runs over [0, 1] (0 clean, 1 pure noise). A schedule maps ``t`` to ``alpha_bar(t)``, the signal fraction
of ``x_t = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise``. The network never sees ``t`` itself: it receives
``t * TIME_SCALE`` ("timesteps", network units), which is what every other module of this package passes around.

Schedules are registered in :data:`ContinuousSchedules` (a MONAI ``ComponentStore``, like MONAI's discrete
``NoiseSchedules``), so a new schedule is one decorated function and the scheduler picks it by name.
"""

from __future__ import annotations

import math

import torch
from monai.utils import ComponentStore

TIME_SCALE = 1000.0  # network units per unit of continuous time: the network receives t * 1000 as a float
ALPHA_BAR_MIN = 1e-4  # keeps 1 / sqrt(alpha_bar) finite at t = 1
ALPHA_BAR_MAX = 1.0 - 1e-4  # keeps 1 / sqrt(1 - alpha_bar) finite near t = 0
COSINE_OFFSET = 0.008  # the "s" of Nichol & Dhariwal's cosine schedule, as in MedSyn

ContinuousSchedules = ComponentStore(
    "ContinuousSchedules", "Functions alpha_bar(t) of continuous time t in [0, 1], returning a tensor like t"
)


@ContinuousSchedules.add_def("cosine", "Cosine schedule cos²(((t + s) / (1 + s)) · π/2), clamped (MedSyn)")
def cosine_alpha_bar(
    t: torch.Tensor, s: float = COSINE_OFFSET, min_value: float = ALPHA_BAR_MIN, max_value: float = ALPHA_BAR_MAX
) -> torch.Tensor:
    """Cosine ``alpha_bar(t) = cos²(((t + s) / (1 + s)) · π / 2)`` clamped to ``[min_value, max_value]``.

    With the default offset the upper clamp only acts for t < 0: ``alpha_bar(0) = cos²(0.008 / 1.008 · π / 2)``
    ≈ 0.999845, already below ``1 - 1e-4``. The lower clamp gives exactly ``1e-4`` at t = 1.

    Args:
        t: continuous time in [0, 1], any shape, floating point.
        s: offset that keeps the first steps from being too small, default 0.008.
        min_value: lower clamp, default 1e-4.
        max_value: upper clamp, default 1 - 1e-4.

    Returns:
        ``alpha_bar`` with the shape, dtype and device of ``t``.
    """
    return torch.cos((t + s) / (1.0 + s) * (math.pi / 2)).square().clamp(min_value, max_value)


def get_schedule(name: str):
    """The ``alpha_bar`` function registered under ``name`` in :data:`ContinuousSchedules`.

    Args:
        name: a registered schedule name, e.g. ``"cosine"``.
    """
    if name not in ContinuousSchedules:
        raise ValueError(f"unknown schedule {name!r}; expected one of {ContinuousSchedules.names}")
    return ContinuousSchedules[name]
