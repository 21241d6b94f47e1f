"""The phantom's normal anatomy measured over many subjects, beside published adult values; prints a table.

    python -m benchmarks.phantom_measures [--num 8] [--sizes 64 256] [--seed 0]

Normal cases (``findings="normal"``) of seeds ``seed .. seed+num-1``; each measure is the case's own ``truth.json``
value (lung volume, airway lumen volume, vessel volume, CTR) or comes from its trees (deepest airway generation
drawn, airway generations whose lumen is at least a voxel across). Ranges are min-max over the cases.
"""

from __future__ import annotations

import argparse
import time

from scripts.phantom import generate_case
from scripts.phantom.build import RESOLVED_FRACTION
from scripts.phantom.trees import build_trees

# what the table compares with (sources in docs/phantom.md)
PUBLISHED = {
    "lungs (L)": "3.7 ± 0.9 (2.4-5.4), CT of 12 normal volunteers [1]",
    "airway lumen (mL)": "~71 for generations 0-9 (Weibel's model A) [2]",
    "vessels (mL)": "125 ± 32 (94-201), vessels ≥ 0.6 mm [1]",
    "vessels / lungs (%)": "~3.4 (125 of 3705 mL) [1]",
    "CTR": "< 0.5 normal",
}


def measure(size: int, seed: int) -> dict[str, float]:
    case = generate_case(size, seed, findings="normal")
    t = case.truth
    lungs_ml = t["lung_volume_ml"]["total"]
    airways = [s for s in build_trees(case.anatomy).airway]
    drawn = [s.generation for s in airways if s.central or s.r0 >= RESOLVED_FRACTION * case.spacing]
    voxel_wide = [s.generation for s in airways if 2 * s.r0 >= case.spacing]
    return {
        "lungs (L)": lungs_ml / 1000,
        "airway lumen (mL)": t["airway_volume_mm3"] / 1000,
        "vessels (mL)": t["vessel_volume_ml"],
        "vessels / lungs (%)": 100 * t["vessel_volume_ml"] / lungs_ml,
        "CTR": t["cardiothoracic_ratio"],
        "deepest airway generation drawn": max(drawn),
        "deepest generation a voxel across": max(voxel_wide),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.phantom_measures", description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    columns = {}
    for size in args.sizes:
        start = time.perf_counter()
        rows = [measure(size, args.seed + i) for i in range(args.num)]
        columns[size] = {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in rows[0]}
        print(f"# {size}³: {args.num} cases in {time.perf_counter() - start:.0f} s")
    keys = list(next(iter(columns.values())))
    header = " | ".join(f"{s}³ ({320 / s:g} mm)" for s in args.sizes)
    print(f"| measure | {header} | published adult |")
    print("|---|" + "---|" * len(args.sizes) + "---|")
    for k in keys:
        cells = " | ".join(_range(*columns[s][k]) for s in args.sizes)
        print(f"| {k} | {cells} | {PUBLISHED.get(k, '')} |")
    return 0


def _range(lo: float, hi: float) -> str:
    if float(lo).is_integer() and float(hi).is_integer():
        return f"{lo:.0f}-{hi:.0f}"
    digits = 2 if hi < 10 else 0
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
