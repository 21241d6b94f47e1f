"""Radiology reports for phantom cases: "Findings:" and "Impression:" in chest-CT language, consistent with truth.

Wording varies with the seed (several phrasings per statement); the content never does: effusion severity and
cardiomegaly come from the *measured* truth (effusion volume per side, cardiothoracic ratio) with the ranges of
``findings.py``, the other findings from their resolved parameters. Every normal organ system is stated as a
negation ("No pleural effusion.", "Heart size is normal.") so prompt-adherence pairs have clean negatives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..conventions import LOBE_LABELS
from .findings import CTR_RANGES, EFFUSION_ML, Finding, severity_of

# radiology words for the three severities, per finding
_DEGREE = {"small": "mild", "moderate": "moderate", "large": "severe"}
_ADVERB = {"small": "mildly", "moderate": "moderately", "large": "severely"}
_CONSOLIDATION_WORD = {"small": "patchy", "moderate": "segmental", "large": "dense lobar"}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _a(number: int) -> str:
    """Indefinite article for a spoken number ("an 8 mm", "an 11 mm", "a 12 mm")."""
    return "an" if str(number).startswith("8") or number in (11, 18) else "a"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _effusion(truth: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    sev = {s: severity_of(truth["effusion_ml"][s], EFFUSION_ML) for s in ("left", "right")}
    present = [s for s in ("left", "right") if sev[s]]
    if not present:
        return [
            _pick(
                rng,
                [
                    "No pleural effusion.",
                    "There is no pleural effusion.",
                    "No pleural effusion or pneumothorax.",
                    "No evidence of pleural effusion.",
                ],
            )
        ], []
    if len(present) == 2 and sev["left"] == sev["right"]:
        word = sev["left"]
        text = _pick(
            rng,
            [
                f"{_cap(word)} bilateral pleural effusions.",
                f"There are {word} bilateral pleural effusions.",
                f"Bilateral {word} pleural effusions are present.",
            ],
        )
        if word != "small":
            text = text[:-1] + _pick(rng, [" with adjacent compressive atelectasis.", "."])
        return [text], [f"{_cap(word)} bilateral pleural effusions."]
    findings, impression = [], []
    for side in present:
        word = sev[side]
        findings.append(
            _pick(
                rng,
                [
                    f"{_cap(word)} {side} pleural effusion.",
                    f"There is a {word} {side}-sided pleural effusion.",
                    f"A {word} pleural effusion is present on the {side}.",
                ],
            )
        )
        impression.append(f"{_cap(word)} {side} pleural effusion.")
    if len(present) == 1:
        other = "left" if present[0] == "right" else "right"
        findings.append(_pick(rng, [f"No {other} pleural effusion.", f"The {other} pleural space is clear of fluid."]))
    return findings, impression


def _heart(truth: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    word = severity_of(truth["cardiothoracic_ratio"], CTR_RANGES)
    if word is None:
        return [
            _pick(
                rng, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size.", "No cardiomegaly."]
            )
            + " No pericardial effusion."
        ], []
    degree = _DEGREE[word]
    text = _pick(
        rng,
        [
            f"{_cap(degree)} cardiomegaly.",
            f"The heart is {_ADVERB[word]} enlarged.",
            f"There is {degree} cardiomegaly.",
        ],
    )
    return [text + " No pericardial effusion."], [f"{_cap(degree)} cardiomegaly."]


def _lungs(findings: list[Finding], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    out, impression = [], []
    by_type: dict[str, list[Finding]] = {}
    for f in findings:
        by_type.setdefault(f.type, []).append(f)
    for f in by_type.get("emphysema", []):
        degree = _DEGREE[f.severity or "small"]
        where = {"bilateral": "", "left": " in the left lung", "right": " in the right lung"}[f.side or "bilateral"]
        out.append(
            _pick(
                rng,
                [
                    f"{_cap(degree)} centrilobular emphysema{where}, upper lobe predominant.",
                    f"There is {degree} emphysema{where}.",
                    f"{_cap(degree)} emphysematous changes{where}.",
                ],
            )
        )
        impression.append(f"{_cap(degree)} emphysema{where}.")
    for f in by_type.get("bullae", []):
        placed = f.parameters.get("placed", {})
        spheres = [b for s in placed.values() for b in s]
        if not spheres:
            continue
        largest = round(2 * max(b["radius_mm"] for b in spheres))
        if len(spheres) == 1:
            lobe = LOBE_LABELS.get(spheres[0]["lobe"], f"{f.side} lung")
            out.append(f"{_cap(_a(largest))} {largest} mm bulla in the {lobe}.")
            impression.append(f"Bulla in the {lobe}.")
        else:
            where = "both upper lungs" if f.side == "bilateral" else f"the {f.side} upper lung"
            out.append(
                _pick(
                    rng,
                    [
                        f"Multiple bullae in {where}, the largest measuring {largest} mm.",
                        f"Bullous changes in {where}, the largest bulla {largest} mm.",
                    ],
                )
            )
            impression.append(f"Bullae in {where}.")
    if not by_type.get("emphysema") and not by_type.get("bullae"):
        out.append(_pick(rng, ["No emphysema.", "No emphysema or bullae.", "There is no emphysema."]))
    for f in by_type.get("consolidation", []):
        lobe = LOBE_LABELS[int(f.lobe or 0)]
        word = _CONSOLIDATION_WORD[f.severity or "small"]
        out.append(
            _pick(
                rng,
                [
                    f"{_cap(word)} consolidation in the {lobe} with air bronchograms.",
                    f"There is {word} airspace consolidation in the {lobe}.",
                ],
            )
        )
        impression.append(f"{_cap(word)} {lobe} consolidation, compatible with pneumonia.")
    if not by_type.get("consolidation"):
        out.append(_pick(rng, ["No focal consolidation.", "There is no consolidation.", "No airspace consolidation."]))
    for f in by_type.get("nodule", []):
        lobe = LOBE_LABELS[int(f.lobe or 0)]
        size = round(float(f.parameters["diameter_mm"]))
        out.append(
            _pick(
                rng,
                [
                    f"{_cap(_a(size))} {size} mm solid nodule in the {lobe}.",
                    f"There is {_a(size)} {size} mm solid pulmonary nodule in the {lobe}.",
                ],
            )
        )
        impression.append(f"{size} mm {lobe} nodule; follow-up recommended.")
    if not by_type.get("nodule"):
        out.append(
            _pick(rng, ["No pulmonary nodules.", "No suspicious pulmonary nodules.", "No pulmonary nodule or mass."])
        )
    return out, impression


def write_report(findings: list[Finding], truth: dict[str, Any], rng: np.random.Generator) -> str:
    """The report of one case: ``Findings: ...`` then ``Impression: ...`` (two lines)."""
    airways = _pick(rng, ["The trachea and central airways are patent.", "The central airways are patent."])
    lungs, imp_lungs = _lungs(findings, rng)
    pleura, imp_pleura = _effusion(truth, rng)
    heart, imp_heart = _heart(truth, rng)
    mediastinum = _pick(rng, ["No mediastinal or hilar lymphadenopathy.", "No enlarged mediastinal lymph nodes."])
    bones = _pick(rng, ["No acute osseous abnormality.", "The visualised osseous structures are unremarkable."])
    body = " ".join([airways, *lungs, *pleura, *heart, mediastinum, bones])
    impression = imp_pleura + imp_heart + imp_lungs
    if not impression:
        impression = [
            _pick(
                rng,
                [
                    "No acute cardiopulmonary abnormality.",
                    "Normal CT of the chest.",
                    "No acute intrathoracic abnormality.",
                ],
            )
        ]
    return f"Findings: {body}\nImpression: {' '.join(impression)}\n"
