"""Report cleaning and Findings/Impression extraction (scripts/text/reports.py)."""

import json

import pytest

from scripts.text.reports import (
    ReportError,
    encoding_text,
    load_datalist_reports,
    normalise_text,
    parse_report,
    split_sentences,
)
from scripts.text.samples import generate_report_splits, generate_reports


@pytest.mark.parametrize(
    "text, findings, impression",
    [
        ("FINDINGS: Big heart.  No effusion.\nIMPRESSION: Cardiomegaly.", "Big heart. No effusion.", "Cardiomegaly."),
        ("Findings - Lungs clear. Impressions - Normal chest.", "Lungs clear.", "Normal chest."),
        ("findings\nLungs are clear.\n\nimpression\nNo acute disease.", "Lungs are clear.", "No acute disease."),
        ("FINDINGS.\nSmall nodule.\nIMPRESSION.\nNodule.", "Small nodule.", "Nodule."),
        ("Technique: CT chest.\nFindings: Left effusion.\nConclusion: Effusion.", "Left effusion.", "Effusion."),
        ("Clinical  History: cough. FINDINGS:\nNodule in the RUL.\nIMPRESSION:", "Nodule in the RUL.", None),
        ("Findings: A.\nImpression: B.\nFindings: C.", "A. C.", "B."),
        ("The lungs are clear. Impression: Normal study.", "The lungs are clear.", "Normal study."),
        ("Impression: Normal.", None, "Normal."),
        ("Findings:\r\nRight effusion.\r\nImpression:\r\nEffusion.", "Right effusion.", "Effusion."),
    ],
)
def test_sections_are_found_in_many_spellings(text, findings, impression):
    sections = parse_report(text)
    assert sections.findings == findings
    assert sections.impression == impression


def test_free_text_has_no_sections_and_prose_words_are_not_headers():
    text = "There is cardiomegaly. No acute findings. Impression is that of a normal chest. History of smoking."
    sections = parse_report(text)
    assert not sections.has_sections
    assert sections.text == text
    assert encoding_text(text) == text


def test_encoding_text_joins_findings_and_impression_without_headers():
    text = "Technique: non-contrast.\nFINDINGS: Small left effusion.\n\nIMPRESSION:   Effusion."
    assert encoding_text(text) == "Small left effusion. Effusion."


@pytest.mark.parametrize("empty", ["", "   \n\t ", "\x00\x01\x02", "\u200b\u200b", b"  "])
def test_empty_reports_are_rejected_with_a_clear_error(empty):
    with pytest.raises(ReportError, match="empty"):
        encoding_text(empty)


def test_non_text_is_a_type_error():
    with pytest.raises(TypeError, match="str or bytes"):
        normalise_text(None)
    with pytest.raises(TypeError, match="str or bytes"):
        parse_report(42)


def test_non_ascii_and_binary_input_are_cleaned_not_fatal():
    cleaned = normalise_text("Caf\u00e9\tr\u00e9sum\u00e9 \ufb01ndings\u00a0ok")
    assert cleaned == "Caf\u00e9 r\u00e9sum\u00e9 findings ok"
    assert normalise_text("a\x00b\x1bc\u200bd") == "a b c d"
    binary = bytes(range(256)) * 4
    text = encoding_text(binary)
    assert text and "\x00" not in text and "\ufffd" not in text
    chinese = encoding_text("Findings: \u80ba\u7ed3\u8282 3 mm. Impression: \u7ed3\u8282.")
    assert chinese == "\u80ba\u7ed3\u8282 3 mm. \u7ed3\u8282."


def test_very_long_report_is_parsed_quickly():
    text = "Findings: " + "There is a small nodule. " * 3000 + "Impression: Many nodules."
    sections = parse_report(text)
    assert sections.impression == "Many nodules."
    assert len(sections.findings.split()) == 15000


def test_split_sentences():
    assert split_sentences("There is a nodule. 3 mm in size.  No effusion! Stable? yes") == [
        "There is a nodule.",
        "3 mm in size.",
        "No effusion!",
        "Stable? yes",
    ]


def test_datalist_reports_from_text_and_files(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a.txt").write_text("Findings: Clear lungs.\nImpression: Normal.", encoding="utf-8")
    datalist = {
        "training": [
            {"image": "a.nii.gz", "report_file": "reports/a.txt"},
            {"image": "b.nii.gz", "report": "No effusion."},
        ],
        "validation": [{"image": "c.nii.gz", "report": "Cardiomegaly."}],
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist), encoding="utf-8")
    assert load_datalist_reports(path) == ["Findings: Clear lungs.\nImpression: Normal.", "No effusion."]
    assert load_datalist_reports(path, tmp_path, ("validation",)) == ["Cardiomegaly."]
    with pytest.raises(ReportError, match="report file not found"):
        load_datalist_reports(path, tmp_path / "elsewhere")
    with pytest.raises(ReportError, match="no 'test' list"):
        load_datalist_reports(path, splits=("test",))
    path.write_text(json.dumps({"training": [{"image": "x"}]}), encoding="utf-8")
    with pytest.raises(ReportError, match="neither 'report' nor 'report_file'"):
        load_datalist_reports(path)


def test_generated_reports_have_both_sections_and_disjoint_splits():
    reports = generate_reports(50, seed=3)
    assert reports == generate_reports(50, seed=3)
    for report in reports:
        sections = parse_report(report)
        assert sections.findings and sections.impression
    splits = generate_report_splits(40, 20, seed=1)
    assert len(splits["validation"]) == 20
    assert not set(splits["training"]) & set(splits["validation"])
