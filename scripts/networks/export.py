"""Export trained denoiser weights for use without this package: TorchScript (``.ts``) or ``torch.export`` (``.pt2``).

    python -m scripts.networks.export --weights models/lowres_small.pt --out models/lowres_small.ts [--overwrite]
    python -m scripts.networks.export --weights models/sr_small.pt --out sr_small.pt2 --format exported_program

The exported module is the denoiser step ``x0_hat = network(x_t, timesteps, context)`` of one stage, with the
weights in it (docs/export_and_packaging.md):

- ``torchscript`` (the model zoo's format, as ``python -m monai.bundle ckpt_export`` writes it): the scripted
  ``MedSynUNet.forward`` with every branch kept: optional ``context`` (None = the learned null text), optional
  ``drop_context``, any batch, depth, height and width (H and W multiples of ``2 ** (levels - 1)``) and the input
  checks. Load with ``torch.jit.load`` or ``monai.data.load_net_with_metadata`` (Python or C++ libtorch).
- ``exported_program``: ``torch.export`` with dynamic batch, D, H and W (H and W at least twice that multiple).
  Its inputs are fixed at export time: ``(x, timesteps, context)`` for the low-res stage, ``(x, timesteps)`` for
  super-resolution; for the null text pass ``torch.export.load(f).state_dict["null_context"].expand(B, -1, -1)`` as
  ``context``. Load with ``torch.export.load(f).module()``.

Both files carry ``metadata.json`` (the bundle's ``configs/metadata.json``) and ``description.json`` (the weights'
description: stage, network arguments, text encoder, model grid) as extra files. After writing, the file is loaded
back and compared with the eager network on random inputs; the maximum absolute difference is reported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scripts.cli import ArgumentParser, run_main
from scripts.conventions import LOWRES_FACTOR
from scripts.data.io import OutputExistsError, atomic_path, refuse_existing
from scripts.networks.unet import MedSynUNet
from scripts.networks.weights import WeightsNotFoundError, load_network

FORMATS = ("torchscript", "exported_program")
DEFAULT_META_FILE = Path(__file__).resolve().parents[2] / "configs" / "metadata.json"
CHECK_TOLERANCE = 1e-4  # max |exported - eager| accepted by the check after writing
DESCRIPTION_FILE = "description.json"

__all__ = ["FORMATS", "example_inputs", "export_network", "load_exported", "export_weights", "main"]


def example_inputs(
    network: MedSynUNet, batch: int = 2, spatial: tuple[int, int, int] = (64, 64, 64), seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random positional inputs ``(x, timesteps[, context])`` of the shapes the network takes.

    Args:
        network: the denoiser; its ``in_channels``, ``text_tokens`` and ``context_dim`` set the shapes.
        batch: batch size B (at least 2 for an export with a dynamic batch: ``torch.export`` fixes sizes of 1).
        spatial: (D, H, W); H and W multiples of ``network.hw_multiple``.
        seed: seed of the random values.

    Returns:
        ``x`` (B, in_channels, D, H, W) in [-1, 1]-like range, ``timesteps`` (B,) float in [0, 1000), and for a
        text-conditioned network ``context`` (B, text_tokens, context_dim).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, network.in_channels, *spatial, generator=gen)
    timesteps = torch.rand(batch, generator=gen) * 1000
    if network.context_dim is None:
        return x, timesteps
    return x, timesteps, torch.randn(batch, network.text_tokens, network.context_dim, generator=gen)


def stage_shape(info: dict[str, Any], hw_multiple: int = 1) -> tuple[int, int, int]:
    """The (D, H, W) the described stage runs on: the low-res grid (size / 4) or the full grid (size).

    H and W are raised to at least ``2 * hw_multiple``: ``torch.export`` fixes a size whose bottleneck is 1 wide.
    """
    size = int(info.get("data", {}).get("size", 64 * LOWRES_FACTOR))
    side = size // LOWRES_FACTOR if info["stage"] == "lowres" else size
    hw = max(side, 2 * hw_multiple)
    return (side, hw, hw)


def _dynamic_shapes(network: MedSynUNet, num_inputs: int) -> tuple[dict[int, Any], ...]:
    """Batch, D, H and W free (H and W in multiples of ``hw_multiple``); channels and text shape fixed."""
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=4096)
    m = network.hw_multiple
    x = {
        0: batch,
        2: dim("depth", min=1, max=4096),
        3: m * dim("height", min=1, max=4096 // m),
        4: m * dim("width", min=1, max=4096 // m),
    }
    return (x, {0: batch}, {0: batch})[:num_inputs]


def export_network(
    network: MedSynUNet, format: str = "torchscript", inputs: tuple[torch.Tensor, ...] | None = None
) -> torch.jit.ScriptModule | torch.export.ExportedProgram:
    """Convert an eval-mode network: ``torch.jit.script`` (no inputs needed) or ``torch.export`` on ``inputs``."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {list(FORMATS)}")
    network = network.eval()
    if format == "torchscript":
        return torch.jit.script(network)
    inputs = inputs if inputs is not None else example_inputs(network)
    with torch.no_grad():  # an inference graph: no gradient checkpointing traced in
        return torch.export.export(network, inputs, dynamic_shapes=_dynamic_shapes(network, len(inputs)))


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The exported denoiser in ``path`` (``.pt2``: ``torch.export.load(path).module()``; else ``torch.jit.load``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported network at {path}")
    if path.suffix == ".pt2":
        return torch.export.load(path).module()
    return torch.jit.load(str(path), map_location="cpu")


def _save(exported: Any, path: Path, format: str, extra_files: dict[str, str], overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        if format == "torchscript":
            # the layout of monai.data.save_net_with_metadata: load_net_with_metadata reads metadata.json back
            torch.jit.save(exported, str(tmp), _extra_files=extra_files)
        else:
            torch.export.save(exported, tmp, extra_files=extra_files)


def _max_abs_difference(network: MedSynUNet, exported: nn.Module, spatial: tuple[int, int, int]) -> float:
    inputs = example_inputs(network, batch=2, spatial=spatial, seed=1)
    with torch.no_grad():
        return float((exported(*inputs) - network(*inputs)).abs().max())


def export_weights(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "torchscript",
    overwrite: bool = False,
    meta_file: str | os.PathLike | None = DEFAULT_META_FILE,
    check: bool = True,
) -> dict[str, Any]:
    """Load weights in the bundle's format (``NAME.pt`` + ``NAME.json``), export the denoiser and write ``out``.

    Args:
        weights: the ``.pt`` file; its ``.json`` description says which network it fits.
        out: the file to write (``.ts`` for TorchScript, ``.pt2`` for ``torch.export`` by convention).
        format: "torchscript" or "exported_program".
        overwrite: replace an existing ``out``; otherwise an existing file is an error raised before any work.
        meta_file: bundle metadata stored as the extra file ``metadata.json`` (skipped when None or missing).
        check: load the written file back and compare with the eager network on random inputs
            (B=2, D=4, H=W=2·hw_multiple); a difference above 1e-4 is an error.

    Returns:
        ``path``, ``format``, ``stage``, ``max_abs_diff`` (None without ``check``).
    """
    out = Path(out)
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {list(FORMATS)}")
    if (format == "exported_program") != (out.suffix == ".pt2"):
        raise ValueError(f"{out}: name exported_program files *.pt2 and TorchScript files otherwise (e.g. *.ts)")
    refuse_existing(out, overwrite)
    network, info = load_network(weights, hint="pass --weights NAME.pt with NAME.json beside it")
    meta = Path(meta_file).read_text() if meta_file is not None and Path(meta_file).is_file() else "{}"
    extra_files = {"metadata.json": meta, DESCRIPTION_FILE: json.dumps(info)}
    grid = stage_shape(info, network.hw_multiple)
    inputs = example_inputs(network, spatial=grid) if format == "exported_program" else None
    exported = export_network(network, format, inputs)
    _save(exported, out, format, extra_files, overwrite)
    result = {"path": out, "format": format, "stage": info["stage"], "max_abs_diff": None}
    if check:
        m = network.hw_multiple
        diff = _max_abs_difference(network, load_exported(out), (4, 2 * m, 2 * m))
        if not diff <= CHECK_TOLERANCE:
            raise RuntimeError(f"{out}: exported network differs from eager by {diff:.3g} > {CHECK_TOLERANCE}")
        result["max_abs_diff"] = diff
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, type=Path, help="weights NAME.pt with NAME.json beside it")
    parser.add_argument("--out", required=True, type=Path, help="file to write (.ts or .pt2)")
    parser.add_argument("--format", default="torchscript", choices=FORMATS)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--meta_file", type=Path, default=DEFAULT_META_FILE, help="bundle metadata to embed")
    parser.add_argument("--no_check", action="store_true", help="skip loading the file back and comparing")
    args = parser.parse_args(argv)
    try:
        result = export_weights(args.weights, args.out, args.format, args.overwrite, args.meta_file, not args.no_check)
    except (WeightsNotFoundError, OutputExistsError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    checked = "" if result["max_abs_diff"] is None else f"; max |exported - eager| = {result['max_abs_diff']:.3g}"
    print(f"wrote {result['path']} ({result['format']}, {result['stage']} denoiser){checked}")
    return 0


if __name__ == "__main__":
    run_main("torchscript export", main)
