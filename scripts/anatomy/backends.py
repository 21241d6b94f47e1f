"""The classical backend and the choice of a backend for each structure (``auto``).

``auto`` takes, for each structure, the first backend of :data:`PREFERENCE` that is installed and has its weights
on disk: lobes by lungmask, else TotalSegmentator, else the classical approximation; airway and vessels by
TotalSegmentator, else classical. A named backend makes what it can and ``auto`` chooses for the rest (lungmask
makes only lobes). A per-structure choice (``--lobe_backend`` …) overrides both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scripts.anatomy import classical, lungmask_backend, totalseg_backend  # noqa: F401  (registers the backends)
from scripts.anatomy.base import (
    BACKENDS,
    STRUCTURES,
    Backend,
    BackendUnavailableError,
    MissingWeightsError,
    backend_factory,
    register_backend,
)

logger = logging.getLogger(__name__)

AUTO = "auto"
PREFERENCE = {
    "lobe": ("lungmask", "totalsegmentator", "classical"),
    "airway": ("totalsegmentator", "classical"),
    "vessel": ("totalsegmentator", "classical"),
}


@register_backend
class ClassicalBackend(Backend):
    """Thresholds, region growing and vesselness (:mod:`scripts.anatomy.classical`); no weights, always ready.

    Options:
        detect_fissures: move the lobe planes to visible fissures (default True).
    """

    name = "classical"
    structures = ("lobe", "airway", "vessel")
    option_names = ("detect_fissures",)

    def _segment(self, ct_hu: np.ndarray, spacing: np.ndarray, structures: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        lungs = classical.segment_lungs(ct_hu, spacing) if {"lobe", "vessel"} & set(structures) else None
        airway = classical.segment_airway(ct_hu, spacing, lungs) if {"airway", "vessel"} & set(structures) else None
        if "airway" in structures:
            out["airway"] = airway
        if "vessel" in structures:
            out["vessel"] = classical.segment_vessels(ct_hu, spacing, lungs, airway)
        if "lobe" in structures:
            detect = bool(self.options.get("detect_fissures", True))
            out["lobe"] = classical.approximate_lobes(ct_hu, spacing, lungs, detect_fissures=detect)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "method": "HU thresholds + components (lungs), region growing (airway), Frangi vesselness (vessels), "
            "anatomical planes with fissure search (lobes, approximate)",
        }


def backend_names() -> list[str]:
    """Valid values of ``--backend``: ``auto`` and every registered backend."""
    return [AUTO, *sorted(BACKENDS)]


def plan_backends(
    backend: str = AUTO,
    structures: Sequence[str] = STRUCTURES,
    overrides: Mapping[str, str | None] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    fallback: bool = False,
) -> tuple[dict[str, Backend], list[str]]:
    """Choose one ready backend per structure.

    Args:
        backend: ``auto`` or a registered name; a named backend makes the structures it supports, ``auto`` the rest.
        structures: structures to make.
        overrides: structure → backend name, taking precedence over ``backend``.
        options: backend name → its options (e.g. ``{"lungmask": {"lungmask_weights": "..."}}``).
        device: ``auto``, ``cpu`` or ``cuda`` for the deep-learning backends.
        fallback: when a requested backend is not ready, use the next ready one of :data:`PREFERENCE` and report it
            in the returned notes, instead of raising.

    Returns:
        (structure → backend instance, notes): instances are shared between structures of the same backend, notes
        are one line per fallback taken.

    Raises:
        MissingWeightsError, BackendUnavailableError: a requested backend is not ready and ``fallback`` is False.
        ValueError: unknown backend or structure, or a backend asked for a structure it cannot make.
    """
    unknown = [s for s in structures if s not in STRUCTURES]
    if unknown:
        raise ValueError(f"unknown structure(s) {unknown}; valid: {list(STRUCTURES)}")
    for name in [backend, *(overrides or {}).values()]:
        if name not in (None, AUTO) and name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {backend_names()}")
    options = options or {}
    instances: dict[str, Backend] = {}

    def instance(name: str) -> Backend:
        if name not in instances:
            instances[name] = backend_factory(name)(device=device, **dict(options.get(name, {})))
        return instances[name]

    plan: dict[str, Backend] = {}
    notes: list[str] = []
    for structure in structures:
        requested = (overrides or {}).get(structure) or backend
        if requested != AUTO and not instance(requested).supports(structure):
            if (overrides or {}).get(structure):
                makes = list(BACKENDS[requested].structures)
                raise ValueError(f"backend {requested} cannot make '{structure}'; it makes {makes}")
            requested = AUTO  # e.g. --backend lungmask: lobes by lungmask, the rest chosen automatically
        if requested != AUTO:
            try:
                instance(requested).check([structure])
                plan[structure] = instance(requested)
                continue
            except (MissingWeightsError, BackendUnavailableError) as err:
                if not fallback:
                    raise
                notes.append(f"{structure}: {err} -> falling back")
        for name in PREFERENCE[structure]:
            if name == requested:
                continue
            candidate = instance(name)
            if candidate.ready([structure]):
                plan[structure] = candidate
                break
        if structure not in plan:  # pragma: no cover - the classical backend is always ready
            raise BackendUnavailableError(f"no backend is ready to make '{structure}'")
        if requested != AUTO:
            notes[-1] += f" to {plan[structure].name}"
    return plan, notes


def describe_plan(plan: Mapping[str, Backend]) -> str:
    """One line such as ``lobe=lungmask airway=classical vessel=classical``."""
    return " ".join(f"{s}={b.name}" for s, b in plan.items())
