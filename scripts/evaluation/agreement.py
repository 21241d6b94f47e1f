"""Agreement of the anatomy measures with the phantom's ``truth.json``: the check behind the measures' accuracy claims.

Each measure is compared with the truth the phantom computed from its tissue map; a measure passes on a case when
its error is within ``REL_TOL`` of the truth or within its absolute allowance (:data:`ABS_TOL`, which covers values
near zero, e.g. no effusion, where a relative error means nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from scripts.evaluation.anatomy_measures import measure_ct

REL_TOL = 0.10
# absolute allowances per measure (the 0.03 for the CTR; 20 mL of fluid; 1.5 points of %LAA-950)
ABS_TOL = {
    "cardiothoracic_ratio": 0.03,
    "effusion_ml_left": 20.0,
    "effusion_ml_right": 20.0,
    "laa950_percent": 1.5,
    "lung_volume_ml": 0.0,
    "airway_volume_mm3": 0.0,
}


def truth_values(truth: dict) -> dict[str, float]:
    """The phantom truth under the measure keys of :data:`scripts.evaluation.anatomy_measures.MEASURES`."""
    return {
        "lung_volume_ml": truth["lung_volume_ml"]["total"],
        "airway_volume_mm3": truth["airway_volume_mm3"],
        "laa950_percent": truth["laa950_percent"],
        "effusion_ml_left": truth["effusion_ml"]["left"],
        "effusion_ml_right": truth["effusion_ml"]["right"],
        "cardiothoracic_ratio": truth["cardiothoracic_ratio"],
    }


def compare(measured: dict[str, float], truth: dict) -> dict[str, dict[str, float | bool]]:
    """Per measure: measured, truth, absolute and relative error, and whether it is within tolerance."""
    out = {}
    for key, expected in truth_values(truth).items():
        value = measured[key]
        error = abs(value - expected)
        relative = error / abs(expected) if expected else float("inf") if error else 0.0
        ok = bool(np.isfinite(value) and (relative <= REL_TOL or error <= ABS_TOL[key]))
        out[key] = {"measured": value, "truth": expected, "abs_error": error, "rel_error": relative, "ok": ok}
    return out


def phantom_agreement(
    num: int = 20,
    size: int = 64,
    seed: int = 0,
    findings: str | None = None,
    backend: str = "classical",
    case_factory: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Measure ``num`` phantom cases (random mix of findings unless ``findings`` is given) against their truth.

    Returns ``{"cases": [{"seed", "findings", "errors"}], "summary": {measure: {"passed", "n", "max_abs_error",
    "max_rel_error"}}}``.
    """
    if case_factory is None:
        from scripts.phantom import generate_case as case_factory
    cases = []
    for k in tqdm(range(num), desc="phantom agreement", disable=not progress):
        case = case_factory(size, seed=seed + k, findings=findings)
        measured = measure_ct(case.ct_hu, (case.spacing,) * 3, backend=backend)
        described = ",".join(
            ":".join(str(f[k]) for k in ("type", "side", "severity") if f.get(k)) for f in case.truth["findings"]
        )
        cases.append({"seed": seed + k, "findings": described or "normal", "errors": compare(measured, case.truth)})
    return {"size": size, "cases": cases, "summary": summarise(cases)}


def summarise(cases: Sequence[dict]) -> dict:
    """Per measure over cases: how many passed, and the largest absolute and (finite) relative error."""
    summary = {}
    for key in ABS_TOL:
        errors = [c["errors"][key] for c in cases]
        finite_rel = [e["rel_error"] for e in errors if np.isfinite(e["rel_error"])]
        summary[key] = {
            "passed": sum(e["ok"] for e in errors),
            "n": len(errors),
            "max_abs_error": max(e["abs_error"] for e in errors),
            "max_rel_error": max(finite_rel) if finite_rel else 0.0,
        }
    return summary


def agreement_markdown(result: dict) -> str:
    """The summary table and the cases outside the tolerance."""
    lines = [
        f"Phantom agreement ({len(result['cases'])} cases, {result['size']}³): pass = within "
        f"{REL_TOL:.0%} of the truth or within the absolute allowance.",
        "",
        "| measure | passed | max abs error | max rel error | absolute allowance |",
        "|---|---|---|---|---|",
    ]
    for key, s in result["summary"].items():
        lines.append(
            f"| {key} | {s['passed']}/{s['n']} | {s['max_abs_error']:.4g} | {s['max_rel_error']:.1%} "
            f"| {ABS_TOL[key]:g} |"
        )
    failures = [
        f"- seed {c['seed']} ({c['findings']}): "
        + ", ".join(f"{k} {e['measured']:.4g} vs {e['truth']:.4g}" for k, e in c["errors"].items() if not e["ok"])
        for c in result["cases"]
        if not all(e["ok"] for e in c["errors"].values())
    ]
    if failures:
        lines += ["", "Cases outside the tolerance (measured vs truth):", *failures]
    return "\n".join(lines) + "\n"
