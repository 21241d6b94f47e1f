"""Report → token features for the diffusion model: a BERT's last hidden layer, first 192 tokens, padding included.

Two ways to prepare a report (``text_input``): ``sections`` (this bundle's weights: cleaned Findings + Impression,
:func:`scripts.text.reports.encoding_text`) and ``raw`` (the official MedSyn weights: the report exactly as given, as
``src/extract_text_feature.py`` tokenises its ``--prompt``).

Example::

    encoder = ReportEncoder("minilm")                      # offline default, hidden 384
    features = encoder.encode(["Findings: ... Impression: ..."])   # (1, 192, 384) float32
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from scripts.conventions import TEXT_TOKENS
from scripts.text.backends import CXR_BERT, MINILM, ModelNotFoundError, load_bert, load_tokenizer, resolve_model
from scripts.text.reports import ReportError, encoding_text, normalise_text

__all__ = ["ReportEncoder", "TEXT_INPUTS", "OFFICIAL_LANGUAGE_MODEL", "OFFICIAL_TEXT_HINT", "prepare_text"]

TEXT_INPUTS = ("sections", "raw")
OFFICIAL_LANGUAGE_MODEL = "medsyn-official-lm"  # text_encoder_info "kind" of converted official weights
OFFICIAL_TEXT_HINT = (
    "pass --text_encoder FOLDER: the official MedSyn language model (pretrained_lm from github.com/batmanlab/MedSyn, a "
    "folder holding its pytorch_model.bin) and, unless CXR-BERT is in the local Hugging Face cache, --text_encoder_base "
    "DIR (a local copy of microsoft/BiomedVLP-CXR-BERT-specialized); docs/official_weights.md"
)


def prepare_text(text: str | bytes, text_input: str = "sections") -> str:
    """The text a report is tokenised as: cleaned Findings + Impression (``sections``) or the report as given
    (``raw``, bytes decoded as UTF-8).

    Raises:
        ReportError: for a report that is empty (after cleaning).
    """
    if text_input == "sections":
        return encoding_text(text)
    if text_input != "raw":
        raise ValueError(f"text_input must be one of {TEXT_INPUTS}, got {text_input!r}")
    raw = bytes(text).decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text
    if not isinstance(raw, str) or not normalise_text(raw):
        raise ReportError("the report is empty; give the report text")
    return raw


logger = logging.getLogger(__name__)

# a WordPiece token covers at most 100 characters (longer words become [UNK]) plus the space before it, so cutting
# cleaned text at this many characters per token keeps the first `context_tokens` tokens exactly
_CHARS_PER_TOKEN = 101


class ReportEncoder:
    """Encode reports into the last hidden layer's token states of a BERT-family model.

    Each report is cleaned and reduced to Findings + Impression (:func:`scripts.text.reports.encoding_text`),
    tokenised, padded to ``context_tokens`` and run through the model; the first ``max_tokens`` states are
    returned, padding positions included (as in MedSyn). Reports longer than ``context_tokens`` are truncated
    with a warning in the log. Results do not depend on how reports are batched.

    Args:
        model: ``"minilm"`` (offline default), a model folder, or a Hugging Face id in the local cache.
        max_tokens: token states kept per report (the diffusion model's text length, 192).
        context_tokens: tokens the model reads before the first ``max_tokens`` are kept; default ``max_tokens``.
            MedSyn reads up to 2048 (with ``max_positions=2048``) so late sentences can inform early tokens.
        max_positions: stretch the position table to this many positions when the model has fewer
            (``extend_position_embeddings``); needed for a ``context_tokens`` above the model's 512.
        device: torch device; default CUDA when available, else CPU.
        batch_size: reports per forward pass.
        text_input: ``sections`` (default) or ``raw``: see :func:`prepare_text`.
        base_model: config and tokenizer of a bare state dict (the official MedSyn language model); None means
            CXR-BERT (a folder, or the Hugging Face id in the local cache).
        official_language_model: ``model`` must be the official MedSyn language-model folder (what official weights
            read); a plain CXR-BERT or any other model is refused.
    """

    def __init__(
        self,
        model: str | Path = MINILM,
        max_tokens: int = TEXT_TOKENS,
        context_tokens: int | None = None,
        max_positions: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        text_input: str = "sections",
        base_model: str | Path | None = None,
        official_language_model: bool = False,
    ) -> None:
        resolved = resolve_model(model, base_model or CXR_BERT, official_language_model)
        network = load_bert(resolved, max_positions=max_positions)
        tokenizer = load_tokenizer(resolved)
        self._setup(network, tokenizer, resolved.model_id, max_tokens, context_tokens, device, batch_size, text_input)

    @classmethod
    def for_weights(
        cls,
        model: str | Path | None,
        info: dict | None,
        device: str | torch.device | None = None,
        base_model: str | Path | None = None,
    ) -> ReportEncoder:
        """The encoder with the settings the low-res weights were trained with (their description's
        ``text_encoder_info``: ``max_tokens``, ``context_tokens``, ``text_input``, ``base_model``, and ``kind``: weights
        converted from the official ones read only the official language model).

        Args:
            model: the encoder (``"minilm"``, a folder, a cached id, the official language-model folder); None when
                the weights name none that ships (official weights: the error says where to get it).
            info: the description's ``text_encoder_info`` (None: this bundle's defaults, 192 tokens, sections).
            device: torch device.
            base_model: overrides the recorded base model (config and tokenizer of a bare state dict).
        """
        info = dict(info or {})
        official = info.get("kind") == OFFICIAL_LANGUAGE_MODEL
        if model is None:
            raise ModelNotFoundError(f"these weights name no text encoder that ships: {OFFICIAL_TEXT_HINT}")
        context = info.get("context_tokens")
        return cls(
            model,
            max_tokens=int(info.get("max_tokens", TEXT_TOKENS)),
            context_tokens=context,
            max_positions=context,
            device=device,
            text_input=info.get("text_input", "sections"),
            base_model=base_model or info.get("base_model"),
            official_language_model=official,
        )

    @classmethod
    def from_modules(
        cls,
        network: nn.Module,
        tokenizer,
        model_id: str,
        max_tokens: int = TEXT_TOKENS,
        context_tokens: int | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        text_input: str = "sections",
    ) -> ReportEncoder:
        """Wrap an already loaded model and tokenizer (tests, models built in memory).

        Args:
            network: a ``transformers`` model returning ``last_hidden_state``.
            tokenizer: its tokenizer.
            model_id: name used in caches and logs.
            max_tokens, context_tokens, device, batch_size, text_input: as in the constructor.
        """
        encoder = cls.__new__(cls)
        encoder._setup(network, tokenizer, model_id, max_tokens, context_tokens, device, batch_size, text_input)
        return encoder

    def _setup(self, network, tokenizer, model_id, max_tokens, context_tokens, device, batch_size, text_input) -> None:
        if text_input not in TEXT_INPUTS:
            raise ValueError(f"text_input must be one of {TEXT_INPUTS}, got {text_input!r}")
        context_tokens = max_tokens if context_tokens is None else context_tokens
        positions = int(network.config.max_position_embeddings)
        if max_tokens < 2 or context_tokens < max_tokens:
            raise ValueError(f"need 2 <= max_tokens <= context_tokens, got {max_tokens} and {context_tokens}")
        if context_tokens > positions:
            raise ValueError(
                f"context_tokens {context_tokens} exceeds the model's {positions} positions; "
                f"pass max_positions={context_tokens} to extend them"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.network = network.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.model_max_length = positions
        self.model_id = model_id
        self.max_tokens = int(max_tokens)
        self.context_tokens = int(context_tokens)
        self.batch_size = int(batch_size)
        self.hidden_size = int(network.config.hidden_size)
        self.text_input = text_input

    def prepare(self, texts: Sequence[str | bytes]) -> list[str]:
        """Each report as the text that is tokenised (and that cache keys are made from): :func:`prepare_text`.

        Args:
            texts: raw reports.

        Returns:
            cleaned Findings + Impression texts, or the reports as given (``text_input="raw"``).

        Raises:
            ReportError: for an empty report.
        """
        return [prepare_text(text, self.text_input) for text in texts]

    def _warn_truncated(self, texts: Sequence[str]) -> None:
        counted = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        lengths = [len(ids) for ids in counted]
        for text, length in zip(texts, lengths):
            if length > self.context_tokens:
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
                logger.warning(
                    "report %s truncated: %s tokens, the limit is %d (%.40r...)",
                    digest,
                    f"{length}" if len(text) < (self.context_tokens + 1) * _CHARS_PER_TOKEN else f">={length}",
                    self.context_tokens,
                    text,
                )

    @torch.inference_mode()
    def encode_prepared(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts already cleaned by :meth:`prepare`.

        Args:
            texts: cleaned texts; very long ones are cut (keeping every token that can be read) and logged.

        Returns:
            float32 tensor (B, max_tokens, hidden_size) on ``self.device``.
        """
        if len(texts) == 0:
            return torch.zeros(0, self.max_tokens, self.hidden_size, device=self.device)
        limit = (self.context_tokens + 1) * _CHARS_PER_TOKEN
        texts = [text[:limit] for text in texts]
        self._warn_truncated(texts)
        outputs = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.context_tokens,
                return_tensors="pt",
            ).to(self.device)
            states = self.network(**batch).last_hidden_state
            outputs.append(states[:, : self.max_tokens].float())
        return torch.cat(outputs)

    def encode(self, texts: str | bytes | Sequence[str | bytes]) -> torch.Tensor:
        """Encode reports.

        Args:
            texts: one report or a list of reports (free text or sectioned).

        Returns:
            float32 tensor (B, max_tokens, hidden_size) on ``self.device``; B is 1 for a single report.

        Raises:
            ReportError: for an empty report.
        """
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        return self.encode_prepared(self.prepare(texts))

    __call__ = encode

    def __repr__(self) -> str:
        return (
            f"ReportEncoder(model_id={self.model_id!r}, hidden_size={self.hidden_size}, "
            f"max_tokens={self.max_tokens}, context_tokens={self.context_tokens}, text_input={self.text_input!r}, "
            f"device={str(self.device)!r})"
        )
