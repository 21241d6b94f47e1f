"""The backend interface for mask making, its errors and the registry that names every backend.

A backend turns a CT (HU, array indexed (x, y, z) in RAS, spacing in mm) into some of the three masks the bundle
trains on (:data:`scripts.conventions.MASK_KEYS`: ``lobe`` 0..5, ``airway`` and ``vessel`` binary). A new
backend is one class decorated with :func:`register_backend`; :mod:`scripts.anatomy.backends` chooses among them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from scripts.conventions import MASK_KEYS

STRUCTURES = tuple(MASK_KEYS)  # ("lobe", "airway", "vessel")
DEVICES = ("auto", "cpu", "cuda")


class BackendUnavailableError(RuntimeError):
    """The backend's package is not installed (the message names the extra or command that installs it)."""


class MissingWeightsError(FileNotFoundError):
    """The backend's weights are not on disk; the message names the missing files and where to put them."""

    def __init__(self, backend: str, missing: Sequence[str | os.PathLike], fix: str) -> None:  # noqa: B042
        self.backend, self.missing, self.fix = backend, [str(m) for m in missing], fix
        super().__init__(f"{backend} weights not found: {', '.join(self.missing)}; {fix}")

    def __reduce__(self):
        # the one-line message is built from three arguments: pickle (multiprocessing workers) must rebuild from them
        return type(self), (self.backend, self.missing, self.fix)


class Backend:
    """Base class of the mask-making backends.

    Subclasses set ``name`` and ``structures`` and implement :meth:`missing_weights`, :meth:`weights_fix` and
    :meth:`_segment`; :meth:`check` raises the clear errors, :meth:`segment` validates the outputs.

    Args:
        device: ``auto`` (GPU when torch sees one), ``cpu`` or ``cuda``.
        options: backend-specific settings (documented on each subclass); unknown keys raise.
    """

    name: ClassVar[str] = ""
    structures: ClassVar[tuple[str, ...]] = ()
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str = "auto", **options: Any) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise ValueError(f"backend {self.name}: unknown option(s) {unknown}; valid: {list(self.option_names)}")
        self.device = device
        self.options = options

    # --- what subclasses provide -----------------------------------------------------------------------------
    def is_installed(self) -> bool:
        """Whether the backend's package can be used (always True for backends without one)."""
        return True

    def install_hint(self) -> str:
        """How to install the backend's package (shown when :meth:`is_installed` is False)."""
        return ""

    def missing_weights(self, structures: Sequence[str]) -> list[Path]:
        """Weight files or folders needed for ``structures`` that are not on disk (empty when ready)."""
        return []

    def weights_fix(self, structures: Sequence[str]) -> str:
        """One sentence: where to put the missing weights (folder and environment variable)."""
        return ""

    def _segment(self, ct_hu: np.ndarray, spacing: np.ndarray, structures: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"backend {self.name} does not implement _segment")

    def describe(self) -> dict[str, Any]:
        """Provenance written beside the masks: backend name, package version, weights used."""
        return {"backend": self.name}

    # --- shared behaviour ------------------------------------------------------------------------------------
    def torch_device(self) -> str:
        """``cuda`` or ``cpu`` for ``device="auto"`` depending on what torch sees."""
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover - torch is a hard requirement of the bundle
            return "cpu"

    def supports(self, structure: str) -> bool:
        return structure in self.structures

    def ready(self, structures: Sequence[str]) -> bool:
        """True when the package is installed and every weight file for ``structures`` is present."""
        return self.is_installed() and not self.missing_weights(structures)

    def check(self, structures: Sequence[str]) -> None:
        """Raise :class:`BackendUnavailableError` or :class:`MissingWeightsError` unless ready for ``structures``."""
        unsupported = [s for s in structures if not self.supports(s)]
        if unsupported:
            raise ValueError(f"backend {self.name} cannot make {unsupported}; it makes {list(self.structures)}")
        missing = self.missing_weights(structures)
        self.require(missing, self.weights_fix(structures) if missing else "")

    def require(self, missing: Sequence[str | os.PathLike], fix: str) -> None:
        """Raise the one-line errors: package not installed (with ``missing`` weights named too), else weights missing.

        Args:
            missing: weight files or folders not on disk.
            fix: where to put them (see :meth:`weights_fix`).
        """
        if not self.is_installed():
            message = f"backend {self.name} is not installed; {self.install_hint()}"
            if missing:
                paths = ", ".join(str(m) for m in missing)
                message += f"; its weights are missing too: {paths}; {fix}"
            raise BackendUnavailableError(message)
        if missing:
            raise MissingWeightsError(self.name, missing, fix)

    def segment(self, ct_hu: np.ndarray, spacing: Sequence[float], structures: Sequence[str]) -> dict[str, np.ndarray]:
        """Masks for ``structures`` as ``uint8`` arrays on the CT's grid (RAS, indexed (x, y, z)).

        Raises:
            BackendUnavailableError, MissingWeightsError: before any work when the backend is not ready.
            ValueError: when the backend returns a mask of the wrong shape or labels.
        """
        structures = list(structures)
        self.check(structures)
        spacing = np.asarray(spacing, dtype=np.float64)
        masks = self._segment(np.asarray(ct_hu, dtype=np.float32), spacing, structures)
        out = {}
        for structure in structures:
            if structure not in masks:
                raise ValueError(f"backend {self.name} returned no '{structure}' mask")
            mask = np.asarray(masks[structure])
            if mask.shape != np.shape(ct_hu):
                raise ValueError(f"backend {self.name}: '{structure}' has shape {mask.shape}, CT {np.shape(ct_hu)}")
            top = 5 if structure == "lobe" else 1
            if mask.size and (mask.min() < 0 or mask.max() > top):
                raise ValueError(f"backend {self.name}: '{structure}' labels outside 0..{top}")
            out[structure] = mask.astype(np.uint8)
        return out


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to :data:`BACKENDS` under its ``name``."""
    if not cls.name or cls.name in BACKENDS:
        raise ValueError(f"backend name {cls.name!r} is empty or already registered")
    BACKENDS[cls.name] = cls
    return cls


def backend_factory(name: str) -> Callable[..., Backend]:
    """The registered class of backend ``name``; an error lists the registered names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
