"""Self-describing network weights: ``NAME.pt`` (a plain state dict) beside ``NAME.json`` (what network it fits).

The JSON holds ``stage`` ("lowres" or "sr"), ``network`` (the :class:`~scripts.networks.MedSynUNet` keyword
arguments), and optional ``text_encoder`` (the encoder whose features the low-res network was trained on) and
``data`` (the model grid: ``spacing``, ``size``, ``size_mode``), plus free provenance fields. A plain state dict
keeps the ``.pt`` file loadable with ``torch.load(weights_only=True)`` by any tool, as MONAI bundles expect of
``models/model.pt``.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scripts.data.io import atomic_path, refuse_existing, write_json
from scripts.networks.presets import STAGES
from scripts.networks.unet import MedSynUNet


class WeightsNotFoundError(FileNotFoundError):
    """Weights missing where the configuration points: the message says where they come from."""


class UnreadableWeightsError(ValueError):
    """A file ``torch.load(weights_only=True)`` cannot read (truncated, damaged, not a PyTorch file, or holding
    objects other than tensors): the message names the file and what to do."""


WEIGHTS_FIX = "re-export or re-download it"

# torch.load's reader errors for bytes that are no (intact) archive; other RuntimeErrors, such as a CUDA location on
# a machine without CUDA, are not about the file and pass unchanged
_READER_MESSAGES = ("PytorchStreamReader", "inline_container", "zip archive", "magic number", "protocol version")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _is_zip_archive(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _check_archive(path: Path) -> None:
    """Raise ``zipfile.BadZipFile`` when a zip-format PyTorch file fails its CRC check: torch's reader does not
    check CRCs, so flipped bytes in tensor data would otherwise load silently as wrong numbers."""
    if not _is_zip_archive(path):
        return  # torch's legacy format (or garbage, which torch.load reports)
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise zipfile.BadZipFile(f"CRC check of {damaged} failed")


def read_state_file(
    path: str | os.PathLike,
    what: str = "PyTorch weights file",
    fix: str = WEIGHTS_FIX,
    map_location: Any = "cpu",
    verify: bool = False,
) -> Any:
    """``torch.load(path, weights_only=True)`` of a file in a trusted format, with a one-line error for a file it
    cannot read.

    Args:
        path: the file (a state dict, a checkpoint, a tensor).
        what: what the file should be, for the error ("training checkpoint").
        fix: the second half of the error (what to do about it).
        map_location: passed to ``torch.load``.
        verify: also check the CRCs of a zip-format file first (reads it twice; worth it for a checkpoint that a
            run is about to continue from).

    Raises:
        UnreadableWeightsError: truncated, damaged or not a PyTorch file, or holding objects other than tensors and
            plain containers; one line naming ``path``. Other errors (a missing file, a CUDA location without CUDA)
            pass unchanged.
    """
    path = Path(path)
    damaged = UnreadableWeightsError(f"{path} is not a readable {what} (truncated or damaged): {fix}")
    try:
        if verify:
            _check_archive(path)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message for a disallowed object proposes weights_only=False, which would run the file's code
        found = _GLOBAL.search(str(err))
        if found:
            raise UnreadableWeightsError(
                f"{path} holds {found.group(1)} objects, not only tensors, so it is not read: {fix}"
            ) from None
        raise damaged from None
    except (EOFError, zipfile.BadZipFile):
        raise damaged from None
    except OSError as err:
        # torch's zip reader seeks before the start of a file cut short (EINVAL); a missing or forbidden file
        # (FileNotFoundError, PermissionError: other errnos) is not about its bytes
        if err.errno != errno.EINVAL:
            raise
        raise damaged from None
    except RuntimeError as err:
        if not any(message in str(err) for message in _READER_MESSAGES):
            raise
        raise damaged from None
    except (KeyError, IndexError, UnicodeDecodeError):
        # what the legacy (pickle-stream) reader raises on bytes that are not a pickle; from a zip archive they
        # would come from somewhere else
        if _is_zip_archive(path):
            raise
        raise damaged from None


def description_path(weights: str | os.PathLike) -> Path:
    """The JSON that describes ``weights`` (same name, ``.json``)."""
    return Path(weights).with_suffix(".json")


def save_network(
    path: str | os.PathLike,
    network: MedSynUNet,
    network_config: dict[str, Any],
    stage: str,
    overwrite: bool = False,
    **description: Any,
) -> Path:
    """Write ``network``'s weights to ``path`` and its description beside it, both atomically.

    Args:
        path: the ``.pt`` file.
        network: the network (its ``state_dict`` is saved, on CPU).
        network_config: the keyword arguments that rebuild it.
        stage: "lowres" or "sr".
        overwrite: replace existing files.
        description: extra JSON fields (``text_encoder``, ``data``, provenance such as training iterations).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    path = Path(path)
    refuse_existing((path, description_path(path)), overwrite)  # checked for both files before writing either
    info = {"stage": stage, "network": dict(network_config), **description}  # JSON writes tuples as lists
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)
    write_json(description_path(path), info, overwrite=True)
    return path


def described_network(info: dict[str, Any]) -> dict[str, Any]:
    """The :class:`MedSynUNet` arguments a description records, with the defaults of arguments added after it was
    written (so two descriptions of one layout compare equal)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(MedSynUNet.__init__).parameters.items()
        if name not in ("self", "use_checkpointing") and parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **info["network"]}


def read_description(path: str | os.PathLike, stage: str | None = None, hint: str = "") -> dict[str, Any]:
    """The JSON description of weights at ``path``, checked to exist and to be of ``stage``."""
    path = Path(path)
    described = description_path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"no {stage or 'network'} weights at {path}{': ' + hint if hint else ''}")
    if not described.is_file():
        raise WeightsNotFoundError(f"{path} has no description {described.name} beside it (stage and network config)")
    try:
        info = json.loads(described.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{described}: not valid JSON ({err})") from None
    if "network" not in info or info.get("stage") not in STAGES:
        raise ValueError(f"{described}: needs 'stage' (one of {STAGES}) and 'network' (MedSynUNet arguments)")
    if stage is not None and info["stage"] != stage:
        raise ValueError(f"{path} holds {info['stage']} weights, but {stage} weights are needed here")
    return info


def load_network(
    path: str | os.PathLike,
    stage: str | None = None,
    device: str | torch.device = "cpu",
    hint: str = "",
    info: dict[str, Any] | None = None,
) -> tuple[MedSynUNet, dict[str, Any]]:
    """Build the described network, load the weights strictly and return ``(network in eval mode, description)``.

    Args:
        path: the ``.pt`` weights.
        stage: expected stage, checked against the description.
        device: where to put the network.
        hint: appended to the missing-file error (how to get the weights).
        info: the description, when the caller has read it already (:func:`read_description`).
    """
    info = info if info is not None else read_description(path, stage, hint)
    network = load_state(MedSynUNet(**info["network"]), path, "its described network")
    return network.to(device).eval(), info


def load_state(module: torch.nn.Module, path: str | os.PathLike, fits: str, fix: str = "") -> torch.nn.Module:
    """Load a plain state dict file into ``module`` strictly (``weights_only``), with a one-line error.

    Args:
        module: the network to fill.
        path: the state dict file.
        fits: what the file must fit, for the error ("its described network").
        fix: appended to the error (how to get a matching file).

    Raises:
        UnreadableWeightsError: the file is truncated, damaged or not a PyTorch file (one line naming it).
        ValueError: missing or unexpected keys (the first five of each named), or tensors of other shapes; nothing
            is loaded partially.
    """
    state = read_state_file(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict: {fix or WEIGHTS_FIX}")
    difference = state_difference(module.state_dict(), state)
    if difference:
        raise ValueError(f"{path} does not fit {fits}: {difference}" + (f"; {fix}" if fix else ""))
    module.load_state_dict(state)
    return module


def state_difference(own: Mapping[str, Any], saved: Mapping[str, Any]) -> str:
    """Why the state dict ``saved`` (from a file) does not fit ``own`` (a module's), in one line, or "" when keys and
    tensor shapes agree: the missing and unexpected keys (the first five of each), else the tensors of other shapes
    (``load_state_dict`` would report those in a message of one line per tensor)."""
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or unexpected:
        more = "..." if len(missing) > 5 or len(unexpected) > 5 else ""
        return f"missing {missing[:5]}, unexpected {unexpected[:5]}{more}"
    shapes = [
        k
        for k, v in own.items()
        if isinstance(saved[k], torch.Tensor) and isinstance(v, torch.Tensor) and saved[k].shape != v.shape
    ]
    if shapes:
        first = shapes[0]
        return (
            f"{len(shapes)} tensors of other shapes, e.g. {first} {list(saved[first].shape)} in the file, "
            f"{list(own[first].shape)} here"
        )
    return ""
