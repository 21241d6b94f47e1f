"""Make lobe, airway and vessel masks for a datalist of chest CTs.

    python -m scripts.anatomy --datalist IN.json --dataset_dir DIR --out OUTDIR \
        [--backend auto|lungmask|totalsegmentator|classical] [--on_error skip|stop] [--workers N]

Writes ``OUTDIR/<case>/{lobe,airway,vessel}.nii.gz`` and ``OUTDIR/datalist.json``; resumable (finished cases are
skipped); exit code 1 when any case failed, 2 for a usage or setup error. See docs/data_preparation.md.

Without ``--overwrite`` no file this command did not write is replaced: when OUTDIR is the dataset folder (its
masks, the input datalist or another ``datalist.json`` would be replaced) the run stops before any compute with one
line listing them and exit code 2; give another ``--out``. See :mod:`scripts.anatomy.batch`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from scripts.anatomy.backends import backend_names
from scripts.anatomy.base import STRUCTURES, BackendUnavailableError, MissingWeightsError
from scripts.anatomy.batch import ON_ERROR, make_masks
from scripts.cli import ArgumentParser, run_main
from scripts.data.datalist import SECTIONS, DataError
from scripts.data.io import OutputExistsError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m scripts.anatomy",
        description="Make lobe (0-5, LTRCLobes order), airway and vessel masks for every case of a datalist.",
    )
    parser.add_argument("--datalist", required=True, help="input datalist JSON")
    parser.add_argument("--dataset_dir", default=None, help="root of relative paths (default: the datalist's folder)")
    parser.add_argument("--out", required=True, help="output folder (masks, datalist.json, summary)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=backend_names(),
        help="auto: best backend whose weights are present, per structure",
    )
    for structure in STRUCTURES:
        parser.add_argument(
            f"--{structure}_backend",
            default=None,
            choices=backend_names(),
            help=f"backend for the {structure} mask only (overrides --backend)",
        )
    parser.add_argument(
        "--on_error",
        default="skip",
        choices=ON_ERROR,
        help="skip: report failed cases and go on, fall back when weights are missing; stop: abort",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (keep 1 with a GPU)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help="datalist sections to process")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo finished cases; replace masks and datalist.json under --out that this command did not write",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--lungmask_weights", default=None, help="path of unet_ltrclobes-3a07043d.pth")
    parser.add_argument(
        "--totalseg_python", default=None, help="python of a separate environment with TotalSegmentator"
    )
    parser.add_argument("--totalseg_fast", action="store_true", help="TotalSegmentator lobes from its 3 mm model")
    parser.add_argument("--no_fissures", action="store_true", help="classical lobes: anatomical planes only")
    return parser


def backend_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-backend options from the command line (only those given)."""
    options: dict[str, dict[str, Any]] = {"lungmask": {}, "totalsegmentator": {}, "classical": {}}
    if args.lungmask_weights:
        options["lungmask"]["lungmask_weights"] = args.lungmask_weights
    if args.totalseg_python:
        options["totalsegmentator"]["totalseg_python"] = args.totalseg_python
    if args.totalseg_fast:
        options["totalsegmentator"]["totalseg_fast"] = True
    if args.no_fissures:
        options["classical"]["detect_fissures"] = False
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the batch; returns the exit code (0 all done, 1 a case failed, 2 a usage or setup error or a refusal)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {s: getattr(args, f"{s}_backend") for s in STRUCTURES if getattr(args, f"{s}_backend")}
    try:
        summary = make_masks(
            args.datalist,
            args.out,
            dataset_dir=args.dataset_dir,
            backend=args.backend,
            overrides=overrides,
            options=backend_options(args),
            device=args.device,
            on_error=args.on_error,
            workers=args.workers,
            sections=args.sections,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    # a refused output (it would replace the dataset's own files) is a usage error: nothing was computed
    except (DataError, OutputExistsError, MissingWeightsError, BackendUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # --on_error stop
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.format(), file=sys.stderr if summary.failed else sys.stdout)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    run_main("anatomy", main)
