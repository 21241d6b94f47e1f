"""A small generator of synthetic chest-CT reports with Findings and Impression, for tests and out-of-the-box runs.

Each report draws a few findings (effusion, cardiomegaly, emphysema, nodule, consolidation, atelectasis,
ground-glass opacity, bullae) with severity and laterality, negates some of the others, and writes an Impression
that summarises exactly the findings present, so the pairing of the two sections can be learnt. Header spelling
and layout vary. The reports are invented text, not from any patient.
"""

from __future__ import annotations

import random

__all__ = ["generate_reports", "generate_report_splits"]

_SIDES = ("right", "left", "bilateral")
_LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
_GRADES = ("small", "moderate", "large")
_SEVERITY = ("mild", "moderate", "severe")


def _effusion(rng: random.Random) -> tuple[str, str]:
    side, grade = rng.choice(_SIDES), rng.choice(_GRADES)
    if side == "bilateral":
        finding = rng.choice((f"There are {grade} bilateral pleural effusions.", f"Bilateral {grade} effusions."))
        return finding, f"{grade.capitalize()} bilateral pleural effusions."
    finding = rng.choice((f"There is a {grade} {side} pleural effusion.", f"A {grade} {side} effusion is seen."))
    return finding, f"{grade.capitalize()} {side} pleural effusion."


def _cardiomegaly(rng: random.Random) -> tuple[str, str]:
    grade = rng.choice(_SEVERITY)
    finding = rng.choice((f"The heart is {grade}ly enlarged.", f"There is {grade} cardiomegaly."))
    return finding, f"{grade.capitalize()} cardiomegaly."


def _emphysema(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("centrilobular", "paraseptal", "panlobular"))
    where = rng.choice(("upper lobe predominant", "diffuse", "lower lobe predominant"))
    return f"There is {where} {kind} emphysema.", f"{kind.capitalize()} emphysema."


def _nodule(rng: random.Random) -> tuple[str, str]:
    size, lobe = rng.randint(3, 25), rng.choice(_LOBES)
    kind = rng.choice(("solid", "part-solid", "ground-glass"))
    finding = f"A {size} mm {kind} nodule is seen in the {lobe}."
    follow = "recommend follow-up CT" if size >= 6 else "likely benign"
    return finding, f"{size} mm {lobe} nodule, {follow}."


def _consolidation(rng: random.Random) -> tuple[str, str]:
    lobe = rng.choice(_LOBES)
    finding = rng.choice(
        (f"There is consolidation in the {lobe} with air bronchograms.", f"Airspace consolidation involves the {lobe}.")
    )
    return finding, f"{lobe.capitalize()} consolidation, compatible with pneumonia."


def _atelectasis(rng: random.Random) -> tuple[str, str]:
    side = rng.choice(("right", "left", "bilateral"))
    return f"Subsegmental atelectasis is noted in the {side} lower lobe{'s' if side == 'bilateral' else ''}.", (
        f"{side.capitalize()} basilar atelectasis."
    )


def _ground_glass(rng: random.Random) -> tuple[str, str]:
    where = rng.choice(("peripheral", "diffuse", "patchy", "perihilar"))
    return f"There are {where} ground-glass opacities.", f"{where.capitalize()} ground-glass opacities."


def _bullae(rng: random.Random) -> tuple[str, str]:
    size = rng.randint(2, 9)
    return f"Apical bullae measure up to {size} cm.", f"Apical bullous disease, up to {size} cm."


_FINDINGS = {
    "effusion": (_effusion, ("No pleural effusion.", "There is no pleural effusion.")),
    "cardiomegaly": (_cardiomegaly, ("Heart size is normal.", "No cardiomegaly.")),
    "emphysema": (_emphysema, ("No emphysema.", "There is no emphysema.")),
    "nodule": (_nodule, ("No suspicious pulmonary nodule.", "No pulmonary nodules are seen.")),
    "consolidation": (_consolidation, ("No focal consolidation.", "There is no consolidation.")),
    "atelectasis": (_atelectasis, ("No atelectasis.",)),
    "ground_glass": (_ground_glass, ("No ground-glass opacity.",)),
    "bullae": (_bullae, ("No bullae.",)),
}
_BOILERPLATE = (
    "The trachea and main bronchi are patent.",
    "The thoracic aorta is normal in caliber.",
    "No mediastinal or hilar lymphadenopathy.",
    "The visualized upper abdomen is unremarkable.",
    "No acute osseous abnormality.",
    "There is no pericardial effusion.",
    "No pneumothorax.",
)
_LAYOUTS = (
    "FINDINGS: {findings}\nIMPRESSION: {impression}",
    "Findings: {findings}\n\nImpression: {impression}",
    "findings - {findings} impression - {impression}",
    "FINDINGS\n{findings}\n\nIMPRESSION\n{impression}",
    "Technique: Non-contrast CT of the chest.\nFindings: {findings}\nConclusion: {impression}",
)
_NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."


def _report(rng: random.Random) -> str:
    names = list(_FINDINGS)
    present = rng.sample(names, k=rng.choices((0, 1, 2, 3), weights=(2, 4, 3, 1))[0])
    sentences, summary = [], []
    for name in present:
        finding, impression = _FINDINGS[name][0](rng)
        sentences.append(finding)
        summary.append(impression)
    absent = [name for name in names if name not in present]
    sentences += [rng.choice(_FINDINGS[name][1]) for name in rng.sample(absent, k=min(len(absent), rng.randint(1, 4)))]
    sentences += rng.sample(_BOILERPLATE, k=rng.randint(1, 3))
    rng.shuffle(sentences)
    layout = rng.choice(_LAYOUTS)
    return layout.format(findings=" ".join(sentences), impression=" ".join(summary) or _NORMAL_IMPRESSION)


def generate_reports(num: int, seed: int = 0) -> list[str]:
    """Make ``num`` synthetic reports with Findings and Impression sections.

    Args:
        num: number of reports.
        seed: random seed; the same seed gives the same reports.

    Returns:
        the reports.
    """
    rng = random.Random(seed)
    return [_report(rng) for _ in range(num)]


def generate_report_splits(num_train: int = 256, num_val: int = 64, seed: int = 0) -> dict[str, list[str]]:
    """Training and held-out report lists with no report text in both.

    Args:
        num_train: training reports.
        num_val: validation reports (drawn until this many unseen texts are found).
        seed: random seed.

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    train = generate_reports(num_train, seed)
    seen, rng, val = set(train), random.Random(seed + 1_000_003), []
    while len(val) < num_val:
        report = _report(rng)
        if report not in seen:
            val.append(report)
            seen.add(report)
    return {"training": train, "validation": val}
