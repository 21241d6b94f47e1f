"""Reports to generate from: one on the command line, or many from a text, CSV or JSON file.

File forms:
- ``.txt`` (or any other suffix): the whole file is one report;
- a folder: every ``*.txt`` file in it is one report, named after the file;
- ``.csv``: one report per row, text in ``report`` or ``prompt``, or CT-RATE's ``Findings_EN`` + ``Impressions_EN``;
  an optional ``id`` (or ``VolumeName``) column names the rows;
- ``.json``: a list of strings, or of objects with ``prompt`` or ``report`` and optional ``id`` (or, as in the VLM3D
  challenge's ``prompts.json``, ``input_image_name``: the id is that name without its extension); or a prompt-pairs
  file of the adherence study (``{"pairs": [{"name", "finding", "negation", ...}]}``, see
  ``scripts.evaluation.adherence``), giving each pair's two reports as ``<name>_finding`` and ``<name>_negation``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from scripts.text.reports import ReportError, normalise_text, read_text_file

MAX_PROMPT_CHARS = 200_000  # far beyond any report; the encoder truncates at its token limit and logs it
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Prompt:
    """A report to generate from. ``id`` names the output files; ``text`` None means no report (null text)."""

    id: str
    text: str | None


def _checked(text: str | None, where: str) -> str:
    if text is None or not normalise_text(text):
        raise ReportError(f"{where}: the report is empty; give the report text (Findings / Impression)")
    if len(text) > MAX_PROMPT_CHARS:
        raise ReportError(f"{where}: the report has {len(text)} characters (limit {MAX_PROMPT_CHARS}); shorten it")
    return text


def _safe_id(name: str, fallback: str) -> str:
    safe = _UNSAFE.sub("_", name).strip("_")[:64]
    return safe or fallback


def _unique(prompts: list[Prompt]) -> list[Prompt]:
    seen: dict[str, int] = {}
    out = []
    for prompt in prompts:
        count = seen.get(prompt.id, 0)
        seen[prompt.id] = count + 1
        out.append(prompt if count == 0 else Prompt(f"{prompt.id}_{count}", prompt.text))
    return out


def read_prompts(prompt: str | None = None, prompt_file: str | Path | None = None) -> list[Prompt]:
    """The prompts of a run: ``prompt`` (id ``prompt``), or those of ``prompt_file``; exactly one must be given.

    Raises:
        ValueError: neither or both given, an unreadable file or a file without reports.
        scripts.text.reports.ReportError: an empty or oversized report (naming which).
    """
    if (prompt is None) == (prompt_file in (None, "")):
        raise ValueError("give exactly one of --prompt (report text) and --prompt_file (file or folder of reports)")
    if prompt is not None:
        return [Prompt("prompt", _checked(prompt, "--prompt"))]
    path = Path(prompt_file)
    if not path.exists():
        raise ValueError(f"--prompt_file {path}: no such file or folder")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"--prompt_file {path}: the folder has no .txt reports")
        prompts = [
            Prompt(_safe_id(f.stem, f"report{i}"), _checked(read_text_file(f), str(f))) for i, f in enumerate(files)
        ]
    elif path.suffix.lower() == ".csv":
        prompts = _from_csv(path)
    elif path.suffix.lower() == ".json":
        prompts = _from_json(path)
    else:
        prompts = [Prompt(_safe_id(path.stem, "report"), _checked(read_text_file(path), str(path)))]
    if not prompts:
        raise ValueError(f"--prompt_file {path}: no reports found")
    return _unique(prompts)


def _from_csv(path: Path) -> list[Prompt]:
    rows = list(csv.DictReader(io.StringIO(read_text_file(path), newline="")))
    prompts = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 2}"
        if row.get("report") or row.get("prompt"):
            text = row.get("report") or row.get("prompt")
        elif "Findings_EN" in row or "Impressions_EN" in row:
            text = f"Findings: {row.get('Findings_EN') or ''}\nImpression: {row.get('Impressions_EN') or ''}"
            if not (row.get("Findings_EN") or row.get("Impressions_EN") or "").strip():
                text = ""
        else:
            raise ValueError(f"{where}: no 'report' or 'prompt' column (or CT-RATE Findings_EN/Impressions_EN)")
        name = row.get("id") or (row.get("VolumeName") or "").replace(".nii.gz", "")
        prompts.append(Prompt(_safe_id(name, f"row{i:04d}"), _checked(text, where)))
    return prompts


def _from_json(path: Path) -> list[Prompt]:
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    elif isinstance(data, dict) and "pairs" in data:  # one file drives both generation and the adherence study
        data = _pair_prompts(path, data["pairs"])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of reports (strings or objects with 'prompt')")
    prompts = []
    for i, entry in enumerate(data):
        where = f"{path} item {i}"
        if isinstance(entry, str):
            text, name = entry, ""
        elif isinstance(entry, dict):
            text, name = entry.get("prompt", entry.get("report")), str(entry.get("id", "") or image_stem(entry))
        else:
            raise ValueError(f"{where}: expected a string or an object with 'prompt'")
        prompts.append(Prompt(_safe_id(name, f"item{i:04d}"), _checked(text, where)))
    return prompts


def image_stem(entry: dict) -> str:
    """The file name a VLM3D prompt's volume is submitted under, without extension (``input_image_name``)."""
    name = Path(str(entry.get("input_image_name") or "")).name
    for suffix in (".nii.gz", ".nii", ".mha"):
        name = name.removesuffix(suffix)
    return name


def _pair_prompts(path: Path, pairs: object) -> list[dict[str, str]]:
    if not isinstance(pairs, list):
        raise ValueError(f"{path}: 'pairs' must be a list of objects with name, finding and negation")
    prompts = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not all(k in pair for k in ("name", "finding", "negation")):
            raise ValueError(f"{path} pair {i}: expected an object with name, finding and negation")
        for side in ("finding", "negation"):
            if all(" ".join(str(pair[side]).split()) != " ".join(str(p["prompt"]).split()) for p in prompts):
                prompts.append({"id": f"{pair['name']}_{side}", "prompt": pair[side]})  # a shared negation once
    return prompts
