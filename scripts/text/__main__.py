"""Command line: fill the embedding cache for the reports of a datalist.

    python -m scripts.text encode --datalist DATALIST.json --out CACHE_DIR [--dataset_dir DIR] [--model minilm]

Prints the cache key (the folder under CACHE_DIR) that training configs read embeddings from.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from scripts.cli import ArgumentParser, run_main
from scripts.conventions import TEXT_TOKENS

logger = logging.getLogger("scripts.text")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m scripts.text", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    encode = commands.add_parser("encode", help="encode every report of a datalist into the embedding cache")
    encode.add_argument("--datalist", required=True, help="datalist JSON with 'report' or 'report_file' items")
    encode.add_argument("--out", required=True, help="cache folder")
    encode.add_argument("--dataset_dir", default=None, help="root of report_file paths (default: datalist folder)")
    encode.add_argument("--splits", nargs="*", default=None, help="lists of the datalist to read (default: all)")
    encode.add_argument("--model", default="minilm", help="'minilm', a model folder or a cached Hugging Face id")
    encode.add_argument("--max_tokens", type=int, default=TEXT_TOKENS, help="token states kept per report")
    encode.add_argument("--context_tokens", type=int, default=None, help="tokens read per report (default max_tokens)")
    encode.add_argument("--max_positions", type=int, default=None, help="extend position embeddings (CXR-BERT: 2048)")
    encode.add_argument(
        "--text_input", default="sections", choices=("sections", "raw"), help="raw: reports as given (official MedSyn)"
    )
    encode.add_argument("--base_model", default=None, help="config and tokenizer of the official language model")
    encode.add_argument("--batch_size", type=int, default=16)
    encode.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    encode.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored precision")
    return parser


def encode(args: argparse.Namespace) -> dict:
    """Encode all reports of the datalist that are not cached yet; returns a summary dict."""
    from scripts.text.cache import EmbeddingCache
    from scripts.text.encoder import ReportEncoder
    from scripts.text.reports import load_datalist_reports, read_json_file

    datalist = Path(args.datalist)
    if not datalist.is_file():
        raise FileNotFoundError(f"datalist not found: {datalist}")
    content = read_json_file(datalist, "datalist")
    if not isinstance(content, dict):
        raise ValueError(f"{datalist}: a datalist is a JSON object of lists, got {type(content).__name__}; fix it")
    splits = args.splits or [key for key, value in content.items() if isinstance(value, list)]
    reports = load_datalist_reports(datalist, args.dataset_dir, splits)
    encoder = ReportEncoder(
        args.model,
        max_tokens=args.max_tokens,
        context_tokens=args.context_tokens,
        max_positions=args.max_positions,
        device=args.device,
        batch_size=args.batch_size,
        text_input=args.text_input,
        **({"base_model": args.base_model} if args.base_model else {}),
    )
    cache = EmbeddingCache(args.out, encoder, dtype=args.dtype)
    start = time.perf_counter()
    for first in range(0, len(reports), 256):
        cache.get(reports[first : first + 256])
        logger.info("%d/%d reports", min(first + 256, len(reports)), len(reports))
    return {
        "cache_dir": str(cache.folder),
        "key": cache.key,
        "model_id": encoder.model_id,
        "hidden_size": encoder.hidden_size,
        "reports": len(reports),
        "encoded": cache.misses,
        "already_cached": cache.hits,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        summary = encode(args)
    except (FileNotFoundError, ValueError) as error:  # missing datalist/model, empty report, bad settings
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_main("text", main)
