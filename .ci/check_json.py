"""Check (or with --fix, rewrite) the bundle's JSON configs in the model zoo's format: 4-space indentation, keys in
their written order, non-ASCII kept, one newline at the end.

Usage: python .ci/check_json.py [--fix] FOLDER_OR_FILE ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def formatted(text: str) -> str:
    """``text`` as the zoo writes JSON (``json.dumps`` keeps the key order of the file)."""
    return json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--fix", action="store_true", help="rewrite files that are not in the format")
    args = parser.parse_args(argv)
    files = sorted(f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.json")))
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            want = formatted(text)
        except json.JSONDecodeError as err:
            print(f"{path}: not valid JSON ({err})")
            bad.append(path)
            continue
        if text != want:
            if args.fix:
                path.write_text(want, encoding="utf-8")
                print(f"{path}: reformatted")
            else:
                print(f"{path}: not in the zoo's JSON format; run `make format`")
                bad.append(path)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
