"""On-disk cache of report embeddings, so diffusion training never runs the text encoder.

Layout: ``<cache_dir>/<key>/<sha256 of the cleaned text>.pt`` holding one (max_tokens, H) tensor, plus
``<cache_dir>/<key>/meta.json``. The key names the encoder's weights and token settings
(``<model_id>_t<max_tokens>_c<context_tokens>``), so two encoders never share files. Files are written atomically
(temporary file, then rename) and read with ``torch.load(weights_only=True)``.

Example::

    cache = EmbeddingCache("outputs/text_cache", ReportEncoder("minilm"))
    features = cache.get(reports)                                   # (B, 192, 384), encodes only misses
    reader = EmbeddingCache("outputs/text_cache", key=cache.key)     # training side: no encoder, misses are errors
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Sequence

import torch

from scripts.data.io import atomic_path, write_json
from scripts.text.encoder import ReportEncoder, prepare_text

__all__ = ["EmbeddingCache", "cache_key", "text_hash"]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def text_hash(text: str) -> str:
    """sha256 hex digest of a cleaned text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(encoder: ReportEncoder) -> str:
    """Folder name for one encoder's embeddings: model id and token settings, filesystem-safe."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder.model_id)
    raw = "_raw" if encoder.text_input == "raw" else ""  # reports tokenised as given (official MedSyn encoder)
    return f"{model}_t{encoder.max_tokens}_c{encoder.context_tokens}{raw}"


class EmbeddingCache:
    """Embeddings of reports stored one file per (encoder, cleaned text).

    Args:
        cache_dir: root folder of the cache.
        encoder: encoder used for misses; None for a read-only cache (then ``key`` is required and a miss raises).
        key: folder name under ``cache_dir``; default :func:`cache_key` of the encoder.
        dtype: ``"float16"`` (default, half the disk) or ``"float32"``; :meth:`get` always returns float32, and
            the same values on a miss as on later hits.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        encoder: ReportEncoder | None = None,
        key: str | None = None,
        dtype: str = "float16",
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        if encoder is None and key is None:
            raise ValueError("a cache without an encoder needs its key (the folder name printed by the encode CLI)")
        self.encoder = encoder
        self.key = key if key is not None else cache_key(encoder)
        self.dtype = _DTYPES[dtype]
        self.folder = Path(cache_dir) / self.key
        # reports tokenised as given have their own key (cache_key's "_raw"), so a reader knows from the key alone
        self.text_input = (
            encoder.text_input if encoder is not None else ("raw" if self.key.endswith("_raw") else "sections")
        )
        self.hits = 0
        self.misses = 0

    def path_for(self, text: str | bytes) -> Path:
        """File that holds (or will hold) the embedding of a raw report."""
        return self.folder / f"{text_hash(prepare_text(text, self.text_input))}.pt"

    def _load(self, path: Path) -> torch.Tensor | None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True).float()
        except FileNotFoundError:
            return None
        except Exception as error:  # a damaged file is re-encoded rather than trusted
            logger.warning("unreadable cache file %s (%s); encoding again", path, error)
            return None

    def _write_meta(self) -> None:
        meta = self.folder / "meta.json"
        if meta.exists() or self.encoder is None:
            return
        info = {
            "model_id": self.encoder.model_id,
            "hidden_size": self.encoder.hidden_size,
            "max_tokens": self.encoder.max_tokens,
            "context_tokens": self.encoder.context_tokens,
            "text_input": self.encoder.text_input,
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        write_json(meta, info, overwrite=True)

    def get(self, texts: str | bytes | Sequence[str | bytes]) -> torch.Tensor:
        """Embeddings of reports, encoding and storing only those not yet cached.

        Args:
            texts: one report or a list of reports.

        Returns:
            float32 CPU tensor (B, max_tokens, H).

        Raises:
            KeyError: on a miss in a cache without an encoder.
            ReportError: for an empty report.
        """
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        cleaned = [prepare_text(text, self.text_input) for text in texts]
        paths = [self.folder / f"{text_hash(text)}.pt" for text in cleaned]
        found: dict[Path, torch.Tensor] = {}
        for path in dict.fromkeys(paths):
            value = self._load(path)
            if value is not None:
                found[path] = value
        missing = [i for i, path in enumerate(paths) if path not in found and paths.index(path) == i]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            if self.encoder is None:
                raise KeyError(
                    f"{len(missing)} report(s) not in the embedding cache {self.folder}; "
                    "fill it with `python -m scripts.text encode --datalist FILE --out DIR`"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_meta()
            encoded = self.encoder.encode_prepared([cleaned[i] for i in missing]).to("cpu", self.dtype)
            for i, value in zip(missing, encoded):
                with atomic_path(paths[i], overwrite=True) as tmp:  # a damaged file is replaced by a fresh one
                    torch.save(value.clone(), tmp)
                found[paths[i]] = value.float()
        return torch.stack([found[path] for path in paths])
