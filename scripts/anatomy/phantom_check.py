"""Dice of the classical masks against the phantom's truth, case by case (the acceptance figures of issue 8).

    python -m scripts.anatomy.phantom_check --num 10 --size 128 --seed 0 [--findings "effusion:right:large"]

Lungs are compared as left/right lung (lobe labels 1-2 vs 3-5), so the figure measures the lung mask itself;
lobe Dice (mean over the five lobes) is reported too, for the approximation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from scripts.anatomy import classical
from scripts.cli import ArgumentParser, run_main
from scripts.conventions import lung_sides
from scripts.phantom import generate_case

# a mixed set of findings, cycled over the cases (None: the phantom's random default mix)
DEFAULT_FINDINGS = (
    "normal",
    "effusion:right:large",
    "consolidation:left:moderate",
    "emphysema:bilateral:moderate",
    "nodule:right:small",
    "cardiomegaly",
    "bullae:left:moderate",
    "effusion:bilateral:moderate,consolidation:right:small",
    None,
    None,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (nonzero = foreground); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def evaluate_case(size: int, seed: int, findings: str | None) -> dict[str, Any]:
    """Classical masks of one phantom case and their Dice against its truth."""
    case = generate_case(size, seed, findings=findings)
    ct, spacing = case.ct_hu.astype(np.float32), [case.spacing] * 3
    timings = {}
    start = time.perf_counter()
    lungs = classical.segment_lungs(ct, spacing)
    timings["lungs"] = time.perf_counter() - start
    start = time.perf_counter()
    airway = classical.segment_airway(ct, spacing, lungs)
    timings["airway"] = time.perf_counter() - start
    start = time.perf_counter()
    vessel = classical.segment_vessels(ct, spacing, lungs, airway)
    timings["vessel"] = time.perf_counter() - start
    start = time.perf_counter()
    lobes = classical.approximate_lobes(ct, spacing, lungs)
    timings["lobes"] = time.perf_counter() - start
    truth_lungs = lung_sides(case.lobe)
    return {
        "seed": seed,
        "findings": findings or "random",
        "lungs": dice(lungs > 0, truth_lungs > 0),
        "left": dice(lungs == 1, truth_lungs == 1),
        "right": dice(lungs == 2, truth_lungs == 2),
        "airway": dice(airway, case.airway),
        "vessel": dice(vessel, case.vessel),
        "lobes": float(np.mean([dice(lobes == k, case.lobe == k) for k in range(1, 6)])),
        "seconds": timings,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings", default=None, help="one findings spec for all cases (default: a mixed set)")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'seed':>4} {'lungs':>6} {'left':>6} {'right':>6} {'airway':>6} {'vessel':>6} {'lobes':>6}  findings")
    for i in range(args.num):
        findings = args.findings if args.findings is not None else DEFAULT_FINDINGS[i % len(DEFAULT_FINDINGS)]
        row = evaluate_case(args.size, args.seed + i, findings)
        rows.append(row)
        print(
            f"{row['seed']:>4} {row['lungs']:6.3f} {row['left']:6.3f} {row['right']:6.3f} {row['airway']:6.3f} "
            f"{row['vessel']:6.3f} {row['lobes']:6.3f}  {row['findings']}  "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in row['seconds'].items())})",
            flush=True,
        )
    keys = ("lungs", "left", "right", "airway", "vessel", "lobes")
    print("mean " + " ".join(f"{np.mean([r[k] for r in rows]):6.3f}" for k in keys))
    print("min  " + " ".join(f"{np.min([r[k] for r in rows]):6.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    run_main("anatomy phantom_check", main)
