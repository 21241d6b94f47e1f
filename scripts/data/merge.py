"""``python -m scripts.data.merge --out DIR/datalist.json A/datalist.json B/datalist.json ...``: one datalist from
several (see :func:`scripts.data.datalist.merge_datalists`), e.g. phantom sets generated in parallel."""

from __future__ import annotations

import sys

from scripts.cli import ArgumentParser, run_main
from scripts.data.datalist import DataError, merge_datalists
from scripts.data.io import OutputExistsError


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m scripts.data.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="datalist files, merged in this order")
    parser.add_argument("--out", required=True, help="the merged datalist; relative paths are rewritten for it")
    parser.add_argument("--training_per_source", type=int, help="keep the first N training items of each source")
    parser.add_argument("--validation_limit", type=int, help="keep the first N validation items in all")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        counts = merge_datalists(
            args.sources, args.out, args.training_per_source, args.validation_limit, overwrite=args.overwrite
        )
    except (DataError, OutputExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    run_main("merge", main)
