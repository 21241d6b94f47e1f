"""lungmask (Hofmanninger et al. 2020) as a backend: the U-net(LTRCLobes) model for the five lobes.

Optional dependency: ``pip install lungmask==0.2.22`` (pulls SimpleITK). lungmask downloads its weights at first
use, which fails offline; this wrapper never lets it download: it looks for the weights file itself and passes it as
``modelpath``. Where the file is looked for, first hit wins:

1. ``lungmask_weights`` option (CLI ``--lungmask_weights``), a file;
2. environment variable ``MEDSYN_LUNGMASK_WEIGHTS``, a file;
3. torch hub's cache, where lungmask itself stores it: ``$TORCH_HOME/hub/checkpoints/unet_ltrclobes-3a07043d.pth``
   (``TORCH_HOME`` defaults to ``~/.cache/torch``).

The model's labels are LTRCLobes order (1 left upper, 2 left lower, 3 right upper, 4 right middle, 5 right lower),
the bundle's own order, so they are written unchanged. lungmask reads a NumPy volume as SimpleITK would hand it
over from an LPS image, indexed (z, y, x) with x towards the patient's left and y towards posterior; the wrapper
converts from and back to the bundle's RAS (x, y, z) layout.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.anatomy.base import Backend, register_backend

WEIGHTS_FILE = "unet_ltrclobes-3a07043d.pth"
WEIGHTS_URL = "https://github.com/JoHof/lungmask/releases/download/v0.0/" + WEIGHTS_FILE
WEIGHTS_ENV = "MEDSYN_LUNGMASK_WEIGHTS"


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), computed without importing torch.hub."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def ras_to_lungmask(ct_ras: np.ndarray) -> np.ndarray:
    """RAS array (x, y, z) → lungmask's layout (z, y, x) with x towards the left and y towards posterior."""
    return np.ascontiguousarray(ct_ras[::-1, ::-1, :].transpose(2, 1, 0))


def lungmask_to_ras(mask: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_lungmask`."""
    return np.ascontiguousarray(mask.transpose(2, 1, 0)[::-1, ::-1, :])


@register_backend
class LungmaskBackend(Backend):
    """Lobes by lungmask's LTRCLobes U-net.

    Options:
        lungmask_weights: path of ``unet_ltrclobes-3a07043d.pth`` (else ``MEDSYN_LUNGMASK_WEIGHTS``, else the
            torch hub cache).
        batch_size: axial slices per forward pass (lungmask's default 20).
    """

    name = "lungmask"
    structures = ("lobe",)
    option_names = ("lungmask_weights", "batch_size")

    def __init__(self, device: str = "auto", **options: Any) -> None:
        super().__init__(device, **options)
        self._inferer: Any = None

    def is_installed(self) -> bool:
        return importlib.util.find_spec("lungmask") is not None

    def install_hint(self) -> str:
        return "install it with `pip install lungmask==0.2.22` (or use --backend classical / auto)"

    def weights_path(self) -> Path:
        """The weights file this backend would load (whether or not it exists)."""
        explicit = self.options.get("lungmask_weights") or os.environ.get(WEIGHTS_ENV)
        return Path(explicit).expanduser() if explicit else torch_hub_checkpoints() / WEIGHTS_FILE

    def missing_weights(self, structures: Sequence[str]) -> list[Path]:
        path = self.weights_path()
        return [] if path.is_file() else [path]

    def weights_fix(self, structures: Sequence[str]) -> str:
        return (
            f"download {WEIGHTS_URL} on a machine with internet and put it at {self.weights_path()}, "
            f"or point {WEIGHTS_ENV} (or --lungmask_weights) at the file"
        )

    def _load(self) -> Any:
        if self._inferer is None:
            from lungmask import LMInferer  # optional dependency, imported only when used

            self._inferer = LMInferer(
                modelname="LTRCLobes",
                modelpath=str(self.weights_path()),
                force_cpu=self.torch_device() == "cpu",
                batch_size=int(self.options.get("batch_size", 20)),
                tqdm_disable=True,
            )
        return self._inferer

    def _segment(self, ct_hu: np.ndarray, spacing: np.ndarray, structures: Sequence[str]) -> dict[str, np.ndarray]:
        lobes = np.asarray(self._load().apply(ras_to_lungmask(ct_hu)))
        return {"lobe": lungmask_to_ras(lobes).astype(np.uint8)}

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("lungmask")
        except PackageNotFoundError:
            package = "not installed"
        return {"backend": self.name, "model": "LTRCLobes", "version": package, "weights": str(self.weights_path())}
