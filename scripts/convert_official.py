"""Convert an official MedSyn checkpoint into this bundle's network weights (SPEC.md §9).

    python -m scripts.convert_official --checkpoint PATH --stage lowres|sr --out FILE [--overwrite]

PATH is an accelerate checkpoint folder (``pytorch_model_1.bin``, the EMA weights, is preferred over
``pytorch_model.bin``) or a ``.bin`` / ``.pt`` state dict. The layout (dim, cond_dim, dim_mults, channels,
attn_heads) is read from the tensor shapes. Output, both written atomically, in the bundle's self-describing
weights format (scripts/networks/weights.py): FILE, a plain state dict with our keys, and FILE with suffix
``.json``: ``stage``, ``network`` (the :class:`MedSynUNet` arguments), ``text_encoder`` (low-res) and provenance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from scripts.networks import OfficialCheckpointError, from_official_state_dict, infer_official_kwargs
from scripts.networks.weights import description_path, save_network

EMA_FILE = "pytorch_model_1.bin"
# the official low-res model reads CXR-BERT token features (768 wide; MedSyn fine-tuned the encoder on CT reports)
OFFICIAL_TEXT_ENCODER = "microsoft/BiomedVLP-CXR-BERT-specialized"
LIVE_FILE = "pytorch_model.bin"


def resolve_checkpoint(path: Path) -> Path:
    """The weights file to read: the file itself, or in an accelerate folder the EMA file, else the live one."""
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} not found: the official MedSyn weights are gated (apply at "
            f"github.com/batmanlab/MedSyn); put the downloaded accelerate checkpoint folder (holding {EMA_FILE} / "
            f"{LIVE_FILE}) or a .bin file at {path}, or pass its location with --checkpoint"
        )
    if path.is_file():
        return path
    for name in (EMA_FILE, LIVE_FILE):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"{path} holds neither {EMA_FILE} (EMA) nor {LIVE_FILE}: pass an accelerate checkpoint folder or a .bin file"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict (tensors only: ``weights_only=True``); a dict with a ``state_dict`` entry is unwrapped."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OfficialCheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def convert(checkpoint: Path, stage: str, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Convert ``checkpoint`` to ``out`` (+ ``out.json``); returns the metadata written to the JSON file."""
    if out.suffix == ".json":
        raise ValueError(f"--out {out} must not end in .json: that name is taken by the metadata file")
    existing = [p for p in (out, description_path(out)) if p.exists()]
    if existing and not overwrite:  # before the (slow) checkpoint load
        raise FileExistsError(f"{existing[0]} exists: pass --overwrite to replace it")
    source = resolve_checkpoint(checkpoint)
    state_dict = load_state_dict(source)
    official_kwargs = infer_official_kwargs(state_dict, stage)
    model = from_official_state_dict(state_dict, stage, **official_kwargs)
    metadata: dict[str, Any] = {
        "converted_from": "official MedSyn checkpoint",
        "official_kwargs": official_kwargs,
        "source": str(source),
        "ema": source.name == EMA_FILE,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if stage == "lowres":
        metadata["text_encoder"] = OFFICIAL_TEXT_ENCODER
    save_network(out, model, model.config, stage, overwrite=overwrite, **metadata)
    return {"stage": stage, **metadata}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="accelerate checkpoint folder or .bin/.pt file")
    parser.add_argument("--stage", required=True, choices=("lowres", "sr"))
    parser.add_argument("--out", required=True, type=Path, help="output weights file (.pt); metadata goes to .json")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.checkpoint, args.stage, args.out, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # OfficialCheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    kind = "EMA weights" if meta["ema"] else "weights"
    print(
        f"read {kind} from {meta['source']}; wrote {args.out} and {args.out.with_suffix('.json')} "
        f"({meta['num_parameters']:,} parameters, {meta['stage']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
