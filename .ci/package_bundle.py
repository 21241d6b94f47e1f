"""Pack the bundle as the model zoo distributes it: one zip holding a single folder named after the bundle.

Usage: python .ci/package_bundle.py [--out outputs/bundle] [--name medsyn_monai] [--overwrite]   (or `make bundle`)

Writes OUT/<name>_<version>.zip (version from configs/metadata.json) containing <name>/ with configs/, scripts/,
models/ (whatever weights are there), docs/, LICENSE, large_files.yml and README.md. Left out: everything else
(tests, benchmarks, .ci, outputs, .venv), caches (__pycache__, *.pyc), hidden files (editor and atomic-write
leftovers) and the files large_files.yml lists (fetched by hand, never shipped). The archive is deterministic:
entries sorted, timestamps and permissions fixed, so the same files give the same bytes. It is written atomically
and an existing archive is kept unless --overwrite. The tool lives beside the CI checks, outside the bundle, as the
zoo's own packaging does (its ci/ folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: the bundle's own atomic writer lives in scripts/

from scripts.data.io import OutputExistsError, atomic_path  # noqa: E402

BUNDLE_NAME = "medsyn_monai"
CONTENTS = ("configs", "scripts", "models", "docs", "LICENSE", "large_files.yml", "README.md")
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold: no build time in the archive


def large_file_paths(root: Path) -> set[str]:
    """Bundle-relative paths listed in ``large_files.yml`` (never shipped in the archive)."""
    listing = root / "large_files.yml"
    if not listing.is_file():
        return set()
    entries = (yaml.safe_load(listing.read_text()) or {}).get("large_files", [])
    return {Path(entry["path"]).as_posix() for entry in entries}


def bundle_files(root: Path) -> list[Path]:
    """The files of the bundle under ``root``, relative to it, sorted."""
    missing = [name for name in CONTENTS if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a complete bundle: missing {missing}")
    large = large_file_paths(root)
    files = []
    for name in CONTENTS:
        top = root / name
        for path in [top] if top.is_file() else top.rglob("*"):
            rel = path.relative_to(root)
            if not path.is_file() or path.is_symlink() or rel.as_posix() in large:
                continue
            if any(part in SKIPPED_DIRS or part.startswith(".") for part in rel.parts):
                continue
            if path.suffix in SKIPPED_SUFFIXES:
                continue
            files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def _entry(arcname: str, source: Path) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
    info.create_system = 3  # unix, whatever system packs it
    executable = source.stat().st_mode & stat.S_IXUSR
    info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def write_bundle_zip(
    root: str | Path = ROOT, out_dir: str | Path = "outputs/bundle", name: str = BUNDLE_NAME, overwrite: bool = False
) -> tuple[Path, list[tuple[str, int]]]:
    """Write ``out_dir/<name>_<version>.zip`` from the bundle at ``root``.

    Returns:
        the archive path and its entries as (name in the archive, size in bytes), in archive order.
    """
    root = Path(root)
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    path = Path(out_dir) / f"{name}_{version}.zip"
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    entries = []
    with atomic_path(path, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for rel in bundle_files(root):
                arcname = f"{name}/{rel.as_posix()}"
                data = (root / rel).read_bytes()
                archive.writestr(_entry(arcname, root / rel), data, compresslevel=9)
                entries.append((arcname, len(data)))
    return path, entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bundle"), help="folder of the archive")
    parser.add_argument("--name", default=BUNDLE_NAME, help="bundle name: the archive's top folder")
    parser.add_argument("--root", type=Path, default=ROOT, help="the bundle's source tree")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    args = parser.parse_args(argv)
    try:
        path, entries = write_bundle_zip(args.root, args.out, args.name, args.overwrite)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for arcname, size in entries:
        print(f"{size:>12,}  {arcname}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    total = sum(size for _, size in entries)
    print(
        f"wrote {path}: {len(entries)} files, {total:,} bytes unpacked, {path.stat().st_size:,} packed, sha256 {digest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
