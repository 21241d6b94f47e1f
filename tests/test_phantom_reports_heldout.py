"""The held-out prompt pairs (configs/adherence_pairs_heldout.json) are written unlike anything the phantom's report
writer produces, so an adherence study on them measures whether a model trained on phantom reports follows reports
phrased another way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from scripts.phantom.findings import _random_mix, _resolve
from scripts.phantom.reports import write_report

PAIRS = Path(__file__).resolve().parents[1] / "configs" / "adherence_pairs_heldout.json"
_HEADER = re.compile(r"^[A-Za-z ]+:\s*")


def _sentences(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        line = _HEADER.sub("", line.strip())
        out.update(s.strip().lower().rstrip(".") for s in re.split(r"(?<=\.)\s+", line) if s.strip())
    return out


def _phantom_sentences(num: int = 400) -> set[str]:
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(num):
        findings = [_resolve(f, rng) for f in _random_mix(rng)]
        truth = {
            "effusion_ml": {side: float(rng.choice([0.0, 150.0, 600.0, 1500.0])) for side in ("left", "right")},
            "cardiothoracic_ratio": float(rng.uniform(0.4, 0.7)),
        }
        seen |= _sentences(write_report(findings, truth, rng))
    return seen


def test_no_sentence_of_the_held_out_pairs_is_one_the_phantom_writes():
    pairs = json.loads(PAIRS.read_text())["pairs"]
    phantom = _phantom_sentences()
    assert len(phantom) > 60  # the writer's variety was sampled, not one template
    for pair in pairs:
        for key in ("finding", "negation"):
            shared = _sentences(pair[key]) & phantom
            assert not shared, f"{pair['name']} {key} repeats phantom sentences {sorted(shared)}"


def test_the_held_out_findings_avoid_the_phantom_words_for_them():
    pairs = {pair["name"]: pair for pair in json.loads(PAIRS.read_text())["pairs"]}
    assert "pleural effusion" not in pairs["effusion_heldout"]["finding"].lower()
    assert "cardiomegaly" not in pairs["cardiomegaly_heldout"]["finding"].lower()
    for pair in pairs.values():  # a pair differs in the finding only: the same number of lines, most of them equal
        finding, negation = pair["finding"].splitlines(), pair["negation"].splitlines()
        assert len(finding) == len(negation) and sum(a != b for a, b in zip(finding, negation)) == 2


def _reports(effusion_ml: dict[str, float], ctr: float, num: int = 120) -> list[str]:
    rng = np.random.default_rng(1)
    truth = {"effusion_ml": effusion_ml, "cardiothoracic_ratio": ctr}
    return [write_report([], truth, rng) for _ in range(num)]


def test_the_phantom_writes_a_statement_many_ways_and_keeps_its_content():
    normal = _reports({"left": 0.0, "right": 0.0}, 0.42)
    pleura = {s for r in normal for s in _sentences(r) if "pleura" in s or "effusion" in s and "pericardial" not in s}
    assert len(pleura) >= 6, pleura  # negations in several forms
    heart_first = {re.search(r"heart|cardio", r, re.I).start() < r.index("leura") for r in normal if "leura" in r}
    assert heart_first == {True, False}  # the organ systems come in more than one order
    right = _reports({"left": 0.0, "right": 1500.0}, 0.42)
    text = " ".join(right).lower()
    assert "right-sided" in text and "on the right" in text and "pleural fluid" in text and "likely" in text
    for report in right:  # whatever the words: a large effusion on the right, none on the left
        findings, impression = report.lower().split("impression:")
        assert "right" in impression and any(w in impression for w in ("large", "extensive"))
        left = [s for s in re.split(r"(?<=\.)\s+", findings) if "left" in s]
        assert left and all(re.search(r"\b(no|clear)\b", s) for s in left), left
    severe = _reports({"left": 0.0, "right": 0.0}, 0.66)
    impressions = {r.split("Impression:")[1].strip() for r in severe}
    assert len(impressions) >= 3 and all(re.search(r"severe|marked", i, re.I) for i in impressions)
