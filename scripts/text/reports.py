"""Radiology report text: cleaning, Findings/Impression extraction and reading reports from a datalist.

Reports arrive as free text ("There is cardiomegaly. No effusion.") or with section headers in many spellings
("FINDINGS:", "Findings -", "impressions:", a header alone on its line, "Conclusion:"). :func:`parse_report`
finds the Findings and Impression sections; :func:`encoding_text` gives the text the encoder sees (Findings then
Impression when either is present, else the whole cleaned report).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from scripts.data.io import read_utf8_text

__all__ = [
    "ReportError",
    "ReportSections",
    "normalise_text",
    "read_text_file",
    "read_json_file",
    "parse_report",
    "encoding_text",
    "split_sentences",
    "report_from_item",
    "load_datalist_reports",
]


class ReportError(ValueError):
    """A report that cannot be used (empty after cleaning, missing, of the wrong type)."""


def read_text_file(path: str | Path) -> str:
    """The text of a user's report, prompt or datalist file: :func:`scripts.data.io.read_utf8_text`, failing with
    :class:`ReportError`."""
    return read_utf8_text(path, ReportError)


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """A user's JSON file (a datalist): UTF-8 as :func:`read_text_file` requires, errors in one line naming it.

    Raises:
        ReportError: the file is not UTF-8 or not valid JSON.
    """
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not a valid {what} ({err}); fix the JSON") from None


# header name (lower case, without a trailing "s") → section it opens; sections other than findings and impression
# only end the previous section and are otherwise dropped
_SECTION_NAMES = {
    "findings": "findings",
    "finding": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "opinion": "impression",
    "technique": "other",
    "comparison": "other",
    "comparisons": "other",
    "history": "other",
    "clinical history": "other",
    "clinical information": "other",
    "indication": "other",
    "indications": "other",
    "examination": "other",
    "exam": "other",
    "procedure": "other",
    "recommendation": "other",
    "recommendations": "other",
}
_NAMES = "|".join(sorted((re.escape(n).replace(r"\ ", r"\s+") for n in _SECTION_NAMES), key=len, reverse=True))
# "Findings:" / "IMPRESSION -" at the start of the text, of a line or of a sentence; or a header alone on its line
_HEADER = re.compile(
    rf"(?:^|(?<=\n)|(?<=[.!?;]))[ \t]*(?P<name>{_NAMES})[ \t]*" r"(?::|[-\u2013\u2014](?=[ \t])|\.?(?=[ \t]*(?:\n|$)))",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str | bytes) -> str:
    """Clean a report for encoding and hashing: NFKC, no control characters, single spaces, stripped.

    Args:
        text: report text; bytes are decoded as UTF-8 with undecodable bytes replaced.

    Returns:
        the cleaned text (may be empty: callers that need text use :func:`encoding_text`).

    Raises:
        TypeError: when ``text`` is neither ``str`` nor ``bytes``.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"report text must be str or bytes, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    # control and format characters (NUL, escape codes, zero-width marks, U+FFFD from bad bytes) become spaces
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") or c == "\ufffd" else c for c in text)
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class ReportSections:
    """The parts of one report, each cleaned with :func:`normalise_text`.

    Args:
        findings: text of the Findings section, or None when the report has none (or it is empty).
        impression: text of the Impression (or Conclusion/Summary) section, or None.
        text: the whole report, cleaned.
    """

    findings: str | None
    impression: str | None
    text: str

    @property
    def has_sections(self) -> bool:
        """True when a Findings or an Impression section was found."""
        return self.findings is not None or self.impression is not None


def _clean_or_none(text: str) -> str | None:
    text = normalise_text(text).strip(" :-\u2013\u2014")
    return text or None


def parse_report(text: str | bytes) -> ReportSections:
    """Split a report into Findings and Impression.

    Headers are matched case-insensitively with a colon or dash after them, or alone on their line; repeated
    sections are joined. Untitled text before the first header counts as the Findings when the report has an
    Impression but no Findings header; otherwise it only appears in ``text``.

    Args:
        text: the report, free text or sectioned.

    Returns:
        the report's :class:`ReportSections`.

    Raises:
        ReportError: when the report is empty after cleaning.
        TypeError: when ``text`` is neither ``str`` nor ``bytes``.
    """
    cleaned = normalise_text(text)
    if not cleaned:
        raise ReportError("report text is empty (nothing left after removing whitespace and control characters)")
    raw = bytes(text).decode("utf-8", errors="replace") if isinstance(text, (bytes, bytearray)) else text
    raw = unicodedata.normalize("NFKC", raw).replace("\r\n", "\n").replace("\r", "\n")
    parts: dict[str, list[str]] = {"findings": [], "impression": [], "other": []}
    matches = list(_HEADER.finditer(raw))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        section = _SECTION_NAMES[_WHITESPACE.sub(" ", match.group("name").lower())]
        body = _clean_or_none(raw[match.end() : end])
        if body:
            parts[section].append(body)
    findings = " ".join(parts["findings"]) or None
    if findings is None and parts["impression"] and matches:
        # "The lungs are clear. Impression: normal." - untitled text before the first header reads as the findings
        findings = _clean_or_none(raw[: matches[0].start()])
    impression = " ".join(parts["impression"]) or None
    return ReportSections(findings=findings, impression=impression, text=cleaned)


def encoding_text(text: str | bytes) -> str:
    """The text the encoder sees: Findings then Impression (headers dropped), or the whole report without sections.

    Args:
        text: the report.

    Returns:
        non-empty cleaned text.

    Raises:
        ReportError: when the report is empty after cleaning.
    """
    sections = parse_report(text)
    if sections.has_sections:
        return " ".join(part for part in (sections.findings, sections.impression) if part)
    return sections.text


def split_sentences(text: str) -> list[str]:
    """Split cleaned text into sentences at ``.``, ``!`` or ``?`` followed by a capital, digit or quote."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(normalise_text(text))) if s]


def report_from_item(item: dict[str, Any], dataset_dir: str | Path | None = None) -> str:
    """Read the report of one datalist item: its ``report`` text, or the file named by ``report_file``.

    Args:
        item: a datalist entry (``report`` or ``report_file`` relative to ``dataset_dir``).
        dataset_dir: folder that relative ``report_file`` paths are resolved against (default: current folder).

    Returns:
        the raw report text.

    Raises:
        ReportError: when the item has neither key or the file is missing.
    """
    if item.get("report") is not None:
        return item["report"]
    if item.get("report_file"):
        path = Path(item["report_file"])
        if not path.is_absolute():
            path = Path(dataset_dir or ".") / path
        if not path.is_file():
            raise ReportError(f"report file not found: {path} (is --dataset_dir right?)")
        return read_text_file(path)
    raise ReportError(f"datalist item has neither 'report' nor 'report_file': keys {sorted(item)}")


def load_datalist_reports(
    datalist: str | Path, dataset_dir: str | Path | None = None, splits: Sequence[str] = ("training",)
) -> list[str]:
    """Read the reports of a datalist JSON (``{"training": [...], "validation": [...]}``).

    Args:
        datalist: path of the JSON file.
        dataset_dir: root for relative ``report_file`` paths; default the datalist's folder.
        splits: which lists of the file to read, in order; a missing split is an error.

    Returns:
        the raw report texts, in datalist order.

    Raises:
        FileNotFoundError: when the datalist does not exist.
        ReportError: when the file is not UTF-8 JSON, a split is missing or an item has no report.
    """
    datalist = Path(datalist)
    if not datalist.is_file():
        raise FileNotFoundError(f"datalist not found: {datalist}")
    content = read_json_file(datalist, "datalist")
    if not isinstance(content, dict):
        raise ReportError(f"{datalist}: a datalist is a JSON object of lists, got {type(content).__name__}; fix it")
    root = Path(dataset_dir) if dataset_dir else datalist.parent
    reports = []
    for split in splits:
        if split not in content:
            raise ReportError(f"datalist {datalist} has no {split!r} list (has {sorted(content)})")
        reports += [report_from_item(item, root) for item in content[split]]
    return reports
