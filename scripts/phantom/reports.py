"""Radiology reports for phantom cases: "Findings:" and "Impression:" in chest-CT language, consistent with truth.

Wording varies with the seed the ways radiologists vary it: synonyms ("pleural effusion", "pleural fluid";
"cardiomegaly", "cardiac enlargement"), severity and laterality words ("large", "large-volume"; "right",
"right-sided", "on the right"), hedges ("likely", "there appears to be"), negations in several forms ("No ...",
"There is no ...", "Negative for ...", "No ... identified") and the order of the organ systems; the content never does: effusion
severity and cardiomegaly come from the *measured* truth (effusion volume per side, cardiothoracic ratio) with the
ranges of ``findings.py``, the other findings from their resolved parameters. Every normal organ system is stated
as a negation so prompt-adherence pairs have clean negatives. Some words are kept out on purpose ("cardiac
silhouette", "fluid collection", "hemithorax"): the held-out adherence pairs use them
(``configs/adherence_pairs_heldout.json``) to test reports phrased in ways training never showed.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from ..conventions import LOBE_LABELS
from .findings import CTR_RANGES, EFFUSION_ML, Finding, severity_of

T = TypeVar("T")

# radiology words for the three severities, per finding
_DEGREE = {"small": "mild", "moderate": "moderate", "large": "severe"}
_CONSOLIDATION_WORD = {"small": "patchy", "moderate": "segmental", "large": "dense lobar"}
_EFFUSION_WORDS = {
    "small": ("small", "small", "small-volume", "minimal"),
    "moderate": ("moderate", "moderate", "moderate-sized", "moderate-volume"),
    "large": ("large", "large", "large-volume", "extensive"),
}
_HEART_WORDS = {
    "small": ("mild", "mild", "slight"),
    "moderate": ("moderate", "moderate", "moderate"),
    "large": ("severe", "marked", "severe"),
}


def _negation(rng: np.random.Generator, thing: str) -> str:
    """One of the ways a report says ``thing`` is not there."""
    is_are = "are" if thing.endswith("s") else "is"
    return _pick(
        rng,
        [
            f"No {thing}.",
            f"No {thing}.",
            f"There {is_are} no {thing}.",
            f"No evidence of {thing}.",
            f"Negative for {thing}.",
            f"No {thing} {is_are} seen.",
            f"No {thing} identified.",
        ],
    )


def _side(rng: np.random.Generator, side: str) -> tuple[str, str]:
    """(adjective, trailing phrase) for a side: ("right", "") or ("right-sided", "") or ("", " on the right")."""
    return _pick(rng, [(side, ""), (side, ""), (f"{side}-sided", ""), ("", f" on the {side}")])


def _pick(rng: np.random.Generator, options: list[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _a(number: int) -> str:
    """Indefinite article for a spoken number ("an 8 mm", "an 11 mm", "a 12 mm")."""
    return "an" if str(number).startswith("8") or number in (11, 18) else "a"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _effusion(truth: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    sev = {s: severity_of(truth["effusion_ml"][s], EFFUSION_ML) for s in ("left", "right")}
    present = [s for s in ("left", "right") if sev[s]]
    if not present:
        thing = _pick(
            rng, ["pleural effusion", "pleural effusion", "pleural effusion or pneumothorax", "pleural fluid"]
        )
        return [_pick(rng, [_negation(rng, thing), "The pleural spaces are clear."])], []
    if len(present) == 2 and sev["left"] == sev["right"]:
        word = _pick(rng, list(_EFFUSION_WORDS[sev["left"]]))
        noun = _pick(rng, ["pleural effusions", "pleural effusions", "effusions"])
        text = _pick(
            rng,
            [
                f"{_cap(word)} bilateral {noun}.",
                f"There are {word} bilateral {noun}.",
                f"Bilateral {word} {noun} are present.",
                f"{_cap(word)} {noun} on both sides.",
                f"There appear to be {word} bilateral {noun}.",
            ],
        )
        if sev["left"] != "small":
            text = text[:-1] + _pick(rng, [" with adjacent compressive atelectasis.", "."])
        impression = _pick(rng, [f"{_cap(word)} bilateral pleural effusions.", f"Bilateral {word} pleural effusions."])
        return [text], [impression]
    findings, impression = [], []
    for side in present:
        word = _pick(rng, list(_EFFUSION_WORDS[sev[side]]))
        adjective, trailing = _side(rng, side)
        lead = f"{word} {adjective}".rstrip()
        findings.append(
            _pick(
                rng,
                [
                    f"{_cap(lead)} pleural effusion{trailing}.",
                    f"There is {_article(lead)} {lead} pleural effusion{trailing}.",
                    f"{_cap(_article(word))} {word} pleural effusion is present on the {side}.",
                    f"Likely {lead} pleural effusion{trailing}.",
                    f"There appears to be {_article(lead)} {lead} pleural effusion{trailing}.",
                    f"{_cap(sev[side])} amount of {side} pleural fluid.",
                ],
            )
        )
        impression.append(
            _pick(rng, [f"{_cap(word)} {side} pleural effusion.", f"{_cap(side)} {word} pleural effusion."])
        )
    if len(present) == 1:
        other = "left" if present[0] == "right" else "right"
        findings.append(
            _pick(
                rng,
                [
                    f"No {other} pleural effusion.",
                    f"The {other} pleural space is clear of fluid.",
                    f"No effusion on the {other}.",
                    f"The {other} pleural space is clear.",
                ],
            )
        )
    return findings, impression


def _heart(truth: dict[str, Any], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    word = severity_of(truth["cardiothoracic_ratio"], CTR_RANGES)
    pericardium = _negation(rng, "pericardial effusion")
    if word is None:
        size = _pick(
            rng,
            [
                "Heart size is normal.",
                "The heart is normal in size.",
                "Normal heart size.",
                _negation(rng, "cardiomegaly"),
                "The heart is not enlarged.",
            ],
        )
        return [f"{size} {pericardium}"], []
    degree = _pick(rng, list(_HEART_WORDS[word]))
    adverb = degree[:-1] + "ily" if degree.endswith("y") else degree + "ly"
    text = _pick(
        rng,
        [
            f"{_cap(degree)} cardiomegaly.",
            f"The heart is {adverb} enlarged.",
            f"There is {degree} cardiomegaly.",
            f"{_cap(degree)} cardiac enlargement.",
            f"The heart appears {adverb} enlarged.",
        ],
    )
    impression = _pick(
        rng, [f"{_cap(degree)} cardiomegaly.", f"Cardiomegaly, {degree}.", f"{_cap(degree)} cardiac enlargement."]
    )
    return [f"{text} {pericardium}"], [impression]


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
        out.append(_negation(rng, _pick(rng, ["emphysema", "emphysema or bullae"])))
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
        out.append(_negation(rng, _pick(rng, ["focal consolidation", "consolidation", "airspace consolidation"])))
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
            _negation(
                rng, _pick(rng, ["pulmonary nodules", "suspicious pulmonary nodules", "pulmonary nodule or mass"])
            )
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
    systems = [lungs, pleura, heart, [mediastinum]]
    if rng.random() < 0.5:  # half the reports go organ system by organ system in another order
        systems = [systems[i] for i in rng.permutation(len(systems))]
    body = " ".join([airways, *[sentence for system in systems for sentence in system], bones])
    impression = imp_pleura + imp_heart + imp_lungs
    if len(impression) > 1 and rng.random() < 0.3:
        impression = [impression[i] for i in rng.permutation(len(impression))]
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
