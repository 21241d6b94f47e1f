"""Command line: ``python -m scripts.phantom --out DIR --num N --size S --seed K [--findings SPEC]``."""

from __future__ import annotations

import argparse
import sys
import time

from ..cli import ArgumentParser, run_main
from ..data.io import OutputExistsError
from .dataset import write_dataset
from .findings import SEVERITIES, SIDES, TYPES
from .geometry import FOV_MM


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m scripts.phantom",
        description=f"Write procedural chest-CT phantom cases (CT, lobe/airway/vessel masks, report, truth.json) "
        f"and a datalist. Field of view {FOV_MM:g} mm, spacing FOV/size.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument("--size", type=int, default=64, help="edge length in voxels, multiple of 8, 32..512 (64)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--findings",
        default=None,
        help=f"same findings for every case: comma-separated type[:side][:severity] with type in {'/'.join(TYPES)}, "
        f"side in {'/'.join(SIDES)} (or lobe lul/lll/rul/rml/rll), severity in {'/'.join(SEVERITIES)}; "
        f"'normal' for none; default: random mix incl. ~30%% normals",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of cases for validation (0.2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no per-case lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        datalist = write_dataset(
            args.out,
            args.num,
            args.size,
            args.seed,
            args.findings,
            args.val_fraction,
            args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, OutputExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} cases and {datalist} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_main("phantom", main)
