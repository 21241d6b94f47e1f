"""Convert an official MedSyn checkpoint into this bundle's weights (docs/official_weights.md).

    python -m scripts.convert_official --checkpoint PATH --stage lowres|sr --out FILE
        [--weights auto|ema|live] [--decoder_order training|inference] [--size 256] [--overwrite]

PATH is what the official scripts load (``Trainer.load(-1)`` in ``src/eval_low_res_given_prompt.py`` and
``src/eval_super_res.py``): a results folder holding ``<n>_ckpt`` folders (the highest ``n`` is taken), one such
accelerate checkpoint folder, or a single state-dict file (``.bin``, ``.pt``, ``.safetensors``).

Which weights: the official low-res sampling prepares the live and the EMA model and samples with the EMA one
(``pytorch_model_1.bin``); the official super-resolution script prepares one model and so loads the live weights
(``pytorch_model.bin``). ``--weights auto`` (default) follows the official script of the stage; ``ema`` / ``live``
choose. Newer accelerate versions name them ``model_1.safetensors`` / ``model.safetensors``.

Accepted keys: the network's (``denoise_fn.`` from the ``GaussianDiffusion`` wrapper), with wrapper prefixes
(``module.`` from multi-GPU runs, ``_orig_mod.`` from ``torch.compile``, ``ema_model.`` / ``ema.`` from EMA
wrappers), and the schedule buffers the first official training scripts register on ``GaussianDiffusion``
(``betas``, ``alphas_cumprod``, ...), which are recomputed here and dropped. Anything else, and any missing or
mis-shaped network tensor, is an error naming every problem.

Output, both written atomically, in the bundle's self-describing weights format (scripts/networks/weights.py): FILE,
a plain state dict with our keys, and FILE with suffix ``.json``: ``stage``, ``network`` (the :class:`MedSynUNet`
arguments, decoder order included), ``conventions`` (the official ones), ``data`` (the official atlas grid at
``--size``), for stage 1 the text encoder it needs, and provenance.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch

from scripts.cli import ArgumentParser, run_main
from scripts.conventions import DEFAULT_SIZE, MEDSYN_OFFICIAL, TEXT_TOKENS, atlas_grid_affine, atlas_grid_spacing
from scripts.networks import (
    OfficialCheckpointError,
    drop_schedule_buffers,
    from_official_state_dict,
    infer_official_kwargs,
)
from scripts.networks.weights import description_path, read_state_file, save_network
from scripts.text.backends import CXR_BERT
from scripts.text.encoder import OFFICIAL_LANGUAGE_MODEL

# accelerate's names for the models a script prepares, in order: the live model first, the EMA copy second
LIVE_FILES = ("pytorch_model.bin", "model.safetensors")
EMA_FILES = ("pytorch_model_1.bin", "model_1.safetensors")
OFFICIAL_WEIGHTS = {"lowres": "ema", "sr": "live"}  # what the official sampling scripts load
WEIGHTS_CHOICES = ("auto", "ema", "live")
DECODER_ORDERS = ("training", "inference")
# what the official low-res network reads: features of MedSyn's own language model (src/extract_text_feature.py)
OFFICIAL_TEXT = {
    "kind": OFFICIAL_LANGUAGE_MODEL,
    "max_tokens": TEXT_TOKENS,  # hidden_states[-1][:, :192] (src/extract_text_feature.py:59)
    "context_tokens": 2048,  # padding='max_length', max_length=2048 (src/extract_text_feature.py:11-20, 27)
    "text_input": "raw",  # the --prompt as given
    "base_model": CXR_BERT,  # config and tokenizer (src/extract_text_feature.py:24, 31, 50)
}
_CKPT_FOLDER = re.compile(r"^(\d+)_ckpt$")


def _missing_checkpoint(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"checkpoint {path} not found: the official MedSyn weights are gated (apply at github.com/batmanlab/MedSyn); "
        "put the downloaded results folder (holding <n>_ckpt folders), one accelerate checkpoint folder or a state-dict "
        f"file at {path}, or pass its location with --checkpoint"
    )


def newest_checkpoint_folder(folder: Path) -> Path:
    """The folder the official ``Trainer.load(-1)`` reads: ``folder`` itself when it holds model files, else its
    ``<n>_ckpt`` subfolder with the highest ``n``."""
    if any((folder / name).is_file() for name in LIVE_FILES + EMA_FILES):
        return folder
    numbered = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CKPT_FOLDER.match(p.name))]
    if not numbered:
        raise FileNotFoundError(
            f"{folder} holds no model files ({', '.join(LIVE_FILES + EMA_FILES)}) and no <n>_ckpt folders: pass an "
            "official results folder, an accelerate checkpoint folder or a state-dict file"
        )
    return max(numbered)[1]


def resolve_checkpoint(path: Path, stage: str, weights: str = "auto") -> tuple[Path, str]:
    """The weights file to read and which weights it holds (``ema``, ``live`` or ``file``).

    Args:
        path: results folder, checkpoint folder or state-dict file.
        stage: ``lowres`` or ``sr`` (decides ``auto``).
        weights: ``auto`` (the official script's choice for the stage), ``ema`` or ``live``.
    """
    if weights not in WEIGHTS_CHOICES:
        raise ValueError(f"--weights must be one of {WEIGHTS_CHOICES}, got {weights!r}")
    if not path.exists():
        raise _missing_checkpoint(path)
    if path.is_file():
        return path, "file"
    folder = newest_checkpoint_folder(path)
    kind = OFFICIAL_WEIGHTS[stage] if weights == "auto" else weights
    for name in EMA_FILES if kind == "ema" else LIVE_FILES:
        if (folder / name).is_file():
            return folder / name, kind
    other = "live" if kind == "ema" else "ema"
    why = " (what the official script of this stage samples with)" if weights == "auto" else ""
    raise FileNotFoundError(
        f"{folder} has no {kind} weights{why}: expected {' or '.join(EMA_FILES if kind == 'ema' else LIVE_FILES)}; "
        f"pass --weights {other} to convert the {other} weights instead"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors (``weights_only``; safetensors for ``.safetensors``); a dict with a
    ``state_dict`` entry is unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        obj = read_state_file(path, "PyTorch checkpoint", "download it again")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OfficialCheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def official_data(size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """The model grid of official weights: the atlas field of view resized to ``size``³ (the official 256), placed in
    the atlas's world frame; inputs must be on the atlas grid (``atlas`` mode; docs/official_weights.md)."""
    spacing = list(atlas_grid_spacing(size))
    return {"spacing": spacing, "size": int(size), "size_mode": "atlas", "affine": atlas_grid_affine(size).tolist()}


def convert(
    checkpoint: Path,
    stage: str,
    out: Path,
    overwrite: bool = False,
    weights: str = "auto",
    decoder_order: str = "training",
    size: int = DEFAULT_SIZE,
) -> dict[str, Any]:
    """Convert ``checkpoint`` to ``out`` (+ ``out.json``); returns the description written to the JSON file.

    Args:
        checkpoint: results folder, checkpoint folder or state-dict file.
        stage: ``lowres`` or ``sr``.
        out: the ``.pt`` to write.
        overwrite: replace existing outputs.
        weights: ``auto``, ``ema`` or ``live`` (see the module docstring).
        decoder_order: ``training`` (default: the order the weights were trained with) or ``inference`` (the
            official inference scripts' order, to reproduce their volumes exactly).
        size: the model grid edge the weights were trained on (official: 256).
    """
    if out.suffix == ".json":
        raise ValueError(f"--out {out} must not end in .json: that name is taken by the metadata file")
    if decoder_order not in DECODER_ORDERS:
        raise ValueError(f"--decoder_order must be one of {DECODER_ORDERS}, got {decoder_order!r}")
    if int(size) < 8 or int(size) % 4:
        raise ValueError(f"--size must be a multiple of 4 (the official grid is 256), got {size}")
    existing = [p for p in (out, description_path(out)) if p.exists()]
    if existing and not overwrite:  # before the (slow) checkpoint load
        raise FileExistsError(f"{existing[0]} exists: pass --overwrite to replace it")
    source, kind = resolve_checkpoint(checkpoint, stage, weights)
    state_dict, dropped = drop_schedule_buffers(load_state_dict(source))
    official_kwargs = infer_official_kwargs(state_dict, stage)
    model = from_official_state_dict(
        state_dict, stage, decoder_upsample_last=decoder_order == "inference", **official_kwargs
    )
    metadata: dict[str, Any] = {
        "converted_from": "official MedSyn checkpoint",
        "official_kwargs": official_kwargs,
        "source": str(source),
        "weights": kind,
        "decoder_order": decoder_order,
        "dropped_schedule_buffers": dropped,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "conventions": MEDSYN_OFFICIAL.as_dict(),
        "data": official_data(size),
    }
    if stage == "lowres":
        metadata["text_encoder"] = None  # the official language model does not ship: the user points at it
        metadata["text_encoder_info"] = {**OFFICIAL_TEXT, "hidden_size": official_kwargs["cond_dim"]}
    save_network(out, model, model.config, stage, overwrite=overwrite, **metadata)
    return {"stage": stage, **metadata}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m scripts.convert_official", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="results folder, <n>_ckpt folder or file")
    parser.add_argument("--stage", required=True, choices=("lowres", "sr"))
    parser.add_argument("--out", required=True, type=Path, help="output weights file (.pt); metadata goes to .json")
    parser.add_argument(
        "--weights", default="auto", choices=WEIGHTS_CHOICES, help="auto: EMA for lowres, live for sr (official)"
    )
    parser.add_argument(
        "--decoder_order",
        default="training",
        choices=DECODER_ORDERS,
        help="training (the weights' own order) or inference (the official inference scripts' order)",
    )
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="model grid edge the weights were trained on")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    try:
        meta = convert(
            args.checkpoint, args.stage, args.out, args.overwrite, args.weights, args.decoder_order, args.size
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # OfficialCheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    dropped = (
        f", {len(meta['dropped_schedule_buffers'])} schedule buffers dropped"
        if meta["dropped_schedule_buffers"]
        else ""
    )
    print(
        f"read {meta['weights']} weights from {meta['source']}; wrote {args.out} and {args.out.with_suffix('.json')} "
        f"({meta['num_parameters']:,} parameters, {meta['stage']}, decoder order {meta['decoder_order']}{dropped})"
    )
    return 0


if __name__ == "__main__":
    run_main("convert_official", main)
