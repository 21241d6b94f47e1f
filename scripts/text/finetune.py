"""Pieces of MedSyn's text-encoder fine-tuning (paper §4.1), wired by ``configs/train_text_encoder.json``.

Continued pre-training of a BERT on the reports of a datalist with two tasks, summed:

- masked-language modelling: 15 % of the (non-special) tokens are chosen; of those 80 % become ``[MASK]``, 10 % a
  random token, 10 % stay; the model predicts the originals;
- paired-section prediction: the input is ``[CLS] findings [SEP] impression [SEP]``; for half of the samples the
  Impression is replaced by another report's (one with a different Impression text), and a linear head on the
  last-layer [CLS] state predicts paired (1) / unpaired (0).

The engine is MONAI's ``SupervisedTrainer`` with :func:`prepare_pretraining_batch`, :class:`PretrainingModel` and
:class:`PretrainingLoss`; gradient clipping and atomic, resumable checkpoints come from ``scripts.engines``. The
result is saved by :class:`HuggingFaceExport` as a plain Hugging Face folder (BERT without heads + tokenizer) that
``ReportEncoder`` loads directly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from scripts.text.backends import load_bert, resolve_model
from scripts.text.reports import ReportError, load_datalist_reports, normalise_text, parse_report, split_sentences
from scripts.text.samples import generate_report_splits

__all__ = [
    "IGNORE_INDEX",
    "section_pair",
    "report_splits",
    "mask_tokens",
    "PairedSectionDataset",
    "prepare_pretraining_batch",
    "PretrainingModel",
    "PretrainingLoss",
    "masked_lm_loss",
    "paired_section_loss",
    "loss_output",
    "pair_output",
    "target_batch_size",
    "save_pretrained_atomic",
    "HuggingFaceExport",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of tokens that are not predicted (the cross-entropy ignore_index)


def section_pair(report: str) -> tuple[str, str] | None:
    """The two halves a report is paired from: (Findings, Impression), or its sentences split in two.

    Args:
        report: raw report.

    Returns:
        ``(first, second)`` cleaned texts, or None for a report with fewer than two sentences and no sections.
    """
    sections = parse_report(report)
    if sections.findings and sections.impression:
        return sections.findings, sections.impression
    sentences = split_sentences(sections.text)
    if len(sentences) < 2:
        return None
    half = (len(sentences) + 1) // 2
    return " ".join(sentences[:half]), " ".join(sentences[half:])


def report_splits(
    datalist: str | None = None, dataset_dir: str | None = None, num_train: int = 256, num_val: int = 64, seed: int = 0
) -> dict[str, list[str]]:
    """Training and held-out reports: from a datalist, or generated ones when no datalist is given.

    Args:
        datalist: datalist JSON path; empty or None uses :func:`scripts.text.samples.generate_report_splits`.
        dataset_dir: root for ``report_file`` paths (default the datalist's folder).
        num_train, num_val, seed: size and seed of the generated set.

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    if not datalist:
        logger.info("no datalist given: fine-tuning on %d generated reports (%d held out)", num_train, num_val)
        return generate_report_splits(num_train, num_val, seed)
    return {split: load_datalist_reports(datalist, dataset_dir, (split,)) for split in ("training", "validation")}


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    rng: np.random.Generator,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of one sequence.

    Args:
        input_ids: (L,) token ids.
        maskable: (L,) bool, True where a token may be chosen (not special, not padding).
        mask_token_id: id of ``[MASK]``.
        vocab_size: size of the vocabulary random replacements are drawn from.
        rng: random generator.
        probability: share of maskable tokens chosen; at least one is always chosen.

    Returns:
        ``(masked_ids, labels)``, both (L,): labels hold the original id where chosen, else ``IGNORE_INDEX``.
    """
    candidates = np.flatnonzero(maskable.numpy())
    if candidates.size == 0:
        raise ReportError("nothing to mask: the sequence has no ordinary tokens")
    chosen = candidates[rng.random(candidates.size) < probability]
    if chosen.size == 0:
        chosen = rng.choice(candidates, size=1)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[chosen] = input_ids[chosen]
    masked = input_ids.clone()
    action = rng.random(chosen.size)
    masked[chosen[action < 0.8]] = mask_token_id
    random_at = chosen[(action >= 0.8) & (action < 0.9)]
    masked[random_at] = torch.from_numpy(rng.integers(0, vocab_size, size=random_at.size)).to(masked.dtype)
    return masked, labels


SWAP_TRIES = 20  # random partners tried per swap before the least similar one is taken
_WORD = re.compile(r"[a-z0-9]+")
# Impressions made only of these words state that nothing is wrong ("No acute cardiopulmonary abnormality.",
# "Normal CT of the chest."): they are one content, so swapping one for another is no mismatch.
NO_FINDING_WORDS = frozenset(
    "no not acute active normal abnormality abnormalities unremarkable significant intrathoracic cardiopulmonary "
    "thoracic chest ct scan study of the a an in and or for findings evidence disease process".split()
)
NO_FINDING_KEY = "<no finding>"


def impression_key(text: str) -> str:
    """What an Impression says, for choosing swaps: its lower-case normalised text, or :data:`NO_FINDING_KEY`
    when it only states that nothing is wrong."""
    key = normalise_text(text).lower()
    return NO_FINDING_KEY if set(_WORD.findall(key)) <= NO_FINDING_WORDS else key


class PairedSectionDataset(Dataset):
    """Reports as (Findings, Impression) pairs, half of them with a foreign Impression, masked for MLM.

    Args:
        reports: raw reports; those that cannot be split into two parts are skipped (logged).
        tokenizer: the model's tokenizer.
        max_length: tokens per sample, padded and truncated (longest part first).
        mlm_probability: share of tokens chosen for masked-language modelling.
        swap_probability: share of samples whose Impression is swapped with another report's.
        max_overlap: a swapped-in Impression should share less than this fraction of words (Jaccard) with the
            report's own, so that "unpaired" means different content rather than a rewording ("No effusion." vs
            "No pleural effusion."), which no model can detect; up to ``SWAP_TRIES`` partners are drawn. Two
            Impressions that only state normality (:func:`impression_key`) are never swapped for each other.
        seed: random seed.
        fixed: True to draw the same swap and masking for an index every time (held-out evaluation); False to draw
            afresh at each access from one generator (training; use ``num_workers=0`` to keep runs reproducible).

    Items are dicts of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``mlm_labels`` (L,) and
    ``paired`` () long, 1 for the report's own Impression.
    """

    def __init__(
        self,
        reports: Sequence[str],
        tokenizer,
        max_length: int = 256,
        mlm_probability: float = 0.15,
        swap_probability: float = 0.5,
        seed: int = 0,
        fixed: bool = False,
        max_overlap: float = 0.5,
    ) -> None:
        pairs = [section_pair(report) for report in reports]
        self.pairs = [pair for pair in pairs if pair is not None]
        if len(self.pairs) < len(pairs):
            logger.warning("skipped %d report(s) with neither sections nor two sentences", len(pairs) - len(self.pairs))
        keys = [impression_key(second) for _, second in self.pairs]
        distinct = sorted(set(keys))
        if len(distinct) < 2:
            raise ReportError(f"need reports with at least two different Impressions to swap, got {len(distinct)}")
        self._keys = np.array([distinct.index(key) for key in keys])
        self._words = [frozenset(_WORD.findall(normalise_text(second).lower())) for _, second in self.pairs]
        if not 0.0 < max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in (0, 1], got {max_overlap}")
        self.max_overlap = max_overlap
        if not 0.0 <= swap_probability <= 1.0 or not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"bad probabilities: swap {swap_probability}, mlm {mlm_probability}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.mlm_probability = mlm_probability
        self.swap_probability = swap_probability
        self.seed = seed
        self.fixed = fixed
        self._rng = np.random.default_rng(seed)
        self._special = set(tokenizer.all_special_ids)

    def __len__(self) -> int:
        return len(self.pairs)

    def state_dict(self) -> dict:
        """The training generator's state, so a checkpoint resumes the same swaps and masks."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]

    def _swap_partner(self, index: int, rng: np.random.Generator) -> int:
        """A report whose Impression differs in content from ``index``'s (best of ``SWAP_TRIES`` random draws)."""
        others = np.flatnonzero(self._keys != self._keys[index])
        own = self._words[index]
        best, best_overlap = -1, 2.0
        for _ in range(SWAP_TRIES):
            candidate = int(rng.choice(others))
            words = self._words[candidate]
            overlap = len(own & words) / max(len(own | words), 1)
            if overlap < best_overlap:
                best, best_overlap = candidate, overlap
            if overlap < self.max_overlap:
                break
        return best

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index]) if self.fixed else self._rng
        first, second = self.pairs[index]
        paired = rng.random() >= self.swap_probability
        if not paired:
            second = self.pairs[self._swap_partner(index, rng)][1]
        encoded = self.tokenizer(
            first,
            second,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_token_type_ids=True,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"][0]
        maskable = encoded["attention_mask"][0].bool() & torch.tensor([int(t) not in self._special for t in input_ids])
        masked, labels = mask_tokens(
            input_ids, maskable, self.tokenizer.mask_token_id, len(self.tokenizer), rng, self.mlm_probability
        )
        return {
            "input_ids": masked,
            "attention_mask": encoded["attention_mask"][0],
            "token_type_ids": encoded["token_type_ids"][0],
            "mlm_labels": labels,
            "paired": torch.tensor(int(paired)),
        }


def prepare_pretraining_batch(
    batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]:
    """``prepare_batch`` for MONAI engines: ``(input_ids, targets, (), model keyword arguments)``.

    Args:
        batchdata: a collated batch of :class:`PairedSectionDataset` items.
        device: where tensors go.
        non_blocking: passed to ``Tensor.to``.
        kwargs: other ``Tensor.to`` arguments.

    Returns:
        input ids (B, L); targets ``{"mlm_labels": (B, L), "paired": (B,)}``; no positional arguments; keyword
        arguments ``attention_mask``, ``token_type_ids`` and ``masked_positions`` (B, L) bool.
    """
    batch = {k: v.to(device=device, non_blocking=non_blocking, **kwargs) for k, v in batchdata.items()}
    targets = {"mlm_labels": batch["mlm_labels"], "paired": batch["paired"]}
    model_kwargs = {
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
        "masked_positions": batch["mlm_labels"] != IGNORE_INDEX,
    }
    return batch["input_ids"], targets, (), model_kwargs


class PretrainingModel(nn.Module):
    """BERT with a masked-language-modelling head and a paired-section head on the [CLS] state.

    Args:
        base_model: ``"minilm"``, a model folder or a cached Hugging Face id (see ``scripts.text.backends``);
            ignored when ``mlm_model`` is given.
        max_positions: stretch the position table to this many positions (2048 for CXR-BERT as in MedSyn).
        mlm_model: an already built ``BertForMaskedLM`` (e.g. a tiny random one in tests).
        dropout: dropout before the paired-section head.

    The paired-section head is new (a linear layer on the [CLS] state): train it faster than the pretrained
    encoder (:func:`parameter_groups`).
    """

    def __init__(
        self,
        base_model: str | Path = "minilm",
        max_positions: int | None = None,
        mlm_model: nn.Module | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if mlm_model is None:
            mlm_model = load_bert(resolve_model(base_model).path, head="mlm", max_positions=max_positions)
        self.mlm = mlm_model
        hidden = int(mlm_model.config.hidden_size)
        self.pair_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 2))

    @property
    def bert(self) -> nn.Module:
        """The encoder without heads: what is saved and later loaded by ``ReportEncoder``."""
        return self.mlm.base_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run both heads.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L), 1 for real tokens.
            token_type_ids: (B, L), 0 for the first part, 1 for the second.
            masked_positions: (B, L) bool; when given, vocabulary logits are computed only there (saves the
                (B, L, V) product).

        Returns:
            ``{"mlm_logits": (N, V) at masked positions in row-major order, or (B, L, V); "pair_logits": (B, 2)}``.
        """
        states = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        chosen = states[masked_positions] if masked_positions is not None else states
        return {"mlm_logits": self.mlm.cls(chosen), "pair_logits": self.pair_head(states[:, 0])}


def parameter_groups(model: PretrainingModel, lr: float, head_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups: the pretrained encoder and MLM head at ``lr``, the new paired-section head at
    ``head_lr`` (default ``lr``): a head trained from scratch at a fine-tuning rate barely moves in a short run."""
    head = list(model.pair_head.parameters())
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": rest, "lr": lr}, {"params": head, "lr": lr if head_lr is None else head_lr}]


def masked_lm_loss(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the masked tokens (works with either ``mlm_logits`` layout of :class:`PretrainingModel`)."""
    logits, labels = pred["mlm_logits"], target["mlm_labels"]
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, labels[labels != IGNORE_INDEX])


def paired_section_loss(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the paired/unpaired prediction."""
    return F.cross_entropy(pred["pair_logits"], target["paired"])


class PretrainingLoss(nn.Module):
    """``mlm_weight`` · masked-LM loss + ``pair_weight`` · paired-section loss (MedSyn: the plain sum).

    Args:
        mlm_weight: weight of the masked-language-modelling loss.
        pair_weight: weight of the paired-section loss.
    """

    def __init__(self, mlm_weight: float = 1.0, pair_weight: float = 1.0) -> None:
        super().__init__()
        self.mlm_weight = mlm_weight
        self.pair_weight = pair_weight

    def forward(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlm_weight * masked_lm_loss(pred, target) + self.pair_weight * paired_section_loss(pred, target)


def loss_output(output: dict[str, Any]) -> tuple[dict, dict]:
    """``output_transform`` for ignite ``Loss`` metrics: ``(pred, label)`` dicts from an engine's output."""
    return output["pred"], output["label"]


def pair_output(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``output_transform`` for ignite ``Accuracy``: paired-section logits (B, 2) and labels (B,)."""
    return output["pred"]["pair_logits"], output["label"]["paired"]


def target_batch_size(target: dict[str, torch.Tensor]) -> int:
    """Batch size of a target dict (the ``batch_size`` argument of ignite ``Loss``)."""
    return int(target["paired"].shape[0])


def save_pretrained_atomic(model: nn.Module, tokenizer, folder: str | Path) -> Path:
    """Write a Hugging Face folder (model + tokenizer) so readers never see a half-written one.

    The files go to a temporary sibling folder that then replaces ``folder`` by renames.

    Args:
        model: a ``transformers`` model (saved with ``save_pretrained``).
        tokenizer: its tokenizer.
        folder: destination.

    Returns:
        the destination folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


class HuggingFaceExport:
    """Ignite handler that saves the fine-tuned encoder (no heads) and tokenizer as a Hugging Face folder.

    Args:
        network: the :class:`PretrainingModel` being trained.
        tokenizer: its tokenizer.
        output_dir: destination folder (replaced atomically at each save).
        interval: save every ``interval`` epochs; 0 saves only when the run completes.
    """

    def __init__(self, network: PretrainingModel, tokenizer, output_dir: str | Path, interval: int = 1) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.output_dir = Path(output_dir)
        self.interval = interval
        self._saved_at = -1

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if self._saved_at == engine.state.iteration:
            return  # the run ended on an interval save
        save_pretrained_atomic(self.network.bert, self.tokenizer, self.output_dir)
        self._saved_at = engine.state.iteration
        logger.info("epoch %d: text encoder saved to %s", engine.state.epoch, self.output_dir)
