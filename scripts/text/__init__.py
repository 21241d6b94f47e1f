"""Report text → token features for the diffusion model, and the MedSyn fine-tuning recipe of the text encoder.

Modules: ``reports`` (cleaning, Findings/Impression), ``backends`` (where weights come from, offline loading,
position extension), ``encoder`` (``ReportEncoder``), ``cache`` (``EmbeddingCache``), ``finetune`` (pieces of
``configs/train_text_encoder.json``), ``samples`` (synthetic reports). CLI: ``python -m scripts.text encode``.
"""

from scripts.text import backends, cache, encoder, finetune, reports, samples
from scripts.text.backends import CXR_BERT, MINILM, ModelNotFoundError, extend_position_embeddings, resolve_model
from scripts.text.cache import EmbeddingCache
from scripts.text.encoder import ReportEncoder
from scripts.text.reports import ReportError, ReportSections, encoding_text, normalise_text, parse_report

__all__ = [
    "backends",
    "cache",
    "encoder",
    "finetune",
    "reports",
    "samples",
    "CXR_BERT",
    "MINILM",
    "ModelNotFoundError",
    "extend_position_embeddings",
    "resolve_model",
    "EmbeddingCache",
    "ReportEncoder",
    "ReportError",
    "ReportSections",
    "encoding_text",
    "normalise_text",
    "parse_report",
]
