"""Hostile inputs and interruption sweep: a dataset folder as the masks' --out, text files that are not UTF-8, and
the text encoder's load report.

- ``python -m scripts.anatomy --out <the dataset folder>`` must replace none of the dataset's files (its masks, the
  input datalist, another datalist there) without --overwrite, and refuse before any compute (exit code 2);
- a user's text file (prompt file, report file, datalist, CT-RATE CSV) that is not UTF-8 is refused in one line
  naming the file, the offset of the first bad byte in the file, and the fix;
- loading the shipped default text encoder prints no "UNEXPECTED pooler.dense.*" report.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

BOM = b"\xef\xbb\xbf"


# --- (1) anatomy: --out is the dataset folder ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    """Two 32³ phantom cases with their own masks and datalist, written once; tests work on copies."""
    from scripts.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantom") / "data", 2, size=32, seed=0).parent


@pytest.fixture
def dataset(phantom_dataset, tmp_path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(phantom_dataset, folder)
    return folder


def _tree(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the batch gets as far as setting up a backend (the refusal must come before)."""
    from scripts.anatomy import batch

    def refuse(**_):
        raise AssertionError("the backends were set up before the output check")

    monkeypatch.setattr(batch, "plan_backends", refuse)


def _anatomy(datalist: Path, out: Path, *extra: str) -> int:
    from scripts.anatomy.__main__ import main

    return main(["--datalist", str(datalist), "--out", str(out), "--backend", "classical", "--no_progress", *extra])


def test_anatomy_into_the_dataset_folder_is_refused_before_compute_and_changes_nothing(dataset, capsys, no_compute):
    before = _tree(dataset)
    assert _anatomy(dataset / "datalist.json", dataset) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "would replace the input datalist" in err
    assert "6 mask files under --out" in err and "case_0000/lobe.nii.gz" in err
    assert "give another --out (or --overwrite to replace them)" in err
    assert _tree(dataset) == before  # the dataset's masks and its datalist are byte-identical


def test_another_datalist_in_the_dataset_folder_is_refused_too(dataset, capsys, no_compute):
    # a subset datalist of images only: the dataset's masks are not referenced, only found at the output paths
    full = json.loads((dataset / "datalist.json").read_text())
    keep = ("id", "image", "report")
    subset = {section: [{k: i[k] for k in keep} for i in items] for section, items in full.items()}
    (dataset / "subset.json").write_text(json.dumps(subset))
    before = _tree(dataset)
    assert _anatomy(dataset / "subset.json", dataset) == 2
    err = capsys.readouterr().err.strip()
    assert f"{dataset / 'datalist.json'} (a datalist no earlier run of this command wrote)" in err
    assert "6 mask files under --out" in err and "\n" not in err
    assert _tree(dataset) == before


def test_a_datalist_the_command_did_not_write_is_kept_but_its_own_is_rewritten(dataset, tmp_path, capsys):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "datalist.json").write_text('{"training": []}\n')  # e.g. the user's own file in the chosen folder
    assert _anatomy(dataset / "datalist.json", out) == 2
    assert "a datalist no earlier run of this command wrote" in capsys.readouterr().err
    assert (out / "datalist.json").read_text() == '{"training": []}\n'
    (out / "datalist.json").unlink()
    assert _anatomy(dataset / "datalist.json", out) == 0
    # a later run with another input datalist may replace the datalist an earlier run wrote (the resume case)
    first = json.loads((dataset / "datalist.json").read_text())
    (dataset / "one.json").write_text(json.dumps({"training": first["training"][:1]}))
    assert _anatomy(dataset / "one.json", out) == 0
    assert [i["id"] for i in json.loads((out / "datalist.json").read_text())["training"]] == ["case_0000"]


def test_overwrite_replaces_the_dataset_masks_when_asked(dataset, capsys):
    masks = {p: p.read_bytes() for p in dataset.glob("case_*/lobe.nii.gz")}
    assert _anatomy(dataset / "datalist.json", dataset, "--overwrite") == 0
    assert all(path.read_bytes() != content for path, content in masks.items())
    assert "2 done" in capsys.readouterr().out


# --- (13) text files that are not UTF-8 ---------------------------------------------------------------------------
def test_prompt_file_with_a_byte_order_mark_and_a_bad_byte_names_its_offset_in_the_file(tmp_path):
    from scripts.inference.prompts import read_prompts
    from scripts.text.reports import ReportError

    path = tmp_path / "report.txt"
    path.write_bytes(BOM + "Findings: côte.".encode("latin-1"))  # a UTF-8 editor's mark, then a Latin-1 "ô"
    offset = len(BOM) + len("Findings: c")
    with pytest.raises(ReportError, match=f"report.txt: byte {offset} \\(0xf4\\) is not UTF-8; save the file as UTF-8"):
        read_prompts(prompt_file=path)


def test_report_files_and_datalists_that_are_not_utf8_are_refused_naming_the_file(tmp_path, capsys):
    from scripts.text.__main__ import main as text_main
    from scripts.text.reports import ReportError, load_datalist_reports

    (tmp_path / "r.txt").write_bytes("Impression: épanchement.".encode("cp1252"))
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"report_file": "r.txt"}]}))
    with pytest.raises(ReportError, match="r.txt: byte 12 \\(0xe9\\) is not UTF-8; save the file as UTF-8"):
        load_datalist_reports(tmp_path / "list.json")
    (tmp_path / "latin.json").write_bytes('{"training": [{"report": "côte"}]}'.encode("latin-1"))
    with pytest.raises(ReportError, match="latin.json: byte 27 \\(0xf4\\) is not UTF-8"):
        load_datalist_reports(tmp_path / "latin.json")
    assert text_main(["encode", "--datalist", str(tmp_path / "latin.json"), "--out", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "latin.json: byte 27 (0xf4) is not UTF-8; save the file as UTF-8" in err


def test_ct_rate_csv_that_is_not_utf8_is_refused_with_the_offset(tmp_path):
    from scripts.data.ctrate import REPORT_COLUMNS, read_csv_rows
    from scripts.data.datalist import DataError

    header = ",".join(REPORT_COLUMNS) + "\n"
    path = tmp_path / "reports.csv"
    path.write_bytes(BOM + (header + "train_1_a_1.nii.gz,Côte normale.,Normal.\n").encode("latin-1"))
    offset = len(BOM) + len(header) + len("train_1_a_1.nii.gz,C")
    with pytest.raises(DataError, match=f"reports.csv: byte {offset} \\(0xf4\\) is not UTF-8; save the file as UTF-8"):
        read_csv_rows(path, REPORT_COLUMNS)
    path.write_bytes(BOM + (header + "train_1_a_1.nii.gz,Côte normale.,Normal.\n").encode("utf-8"))
    assert read_csv_rows(path, REPORT_COLUMNS)["train_1_a_1"]["Findings_EN"] == "Côte normale."


# --- (14) the text encoder's load report ---------------------------------------------------------------------------
def _printed_while(load, capfd) -> str:
    """Everything ``load()`` logs through transformers or prints to stdout/stderr."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # transformers' logger need not propagate to the root: listen on its own
    logging.getLogger("transformers").addHandler(handler)
    capfd.readouterr()
    try:
        load()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    return "\n".join(r.getMessage() for r in records) + "".join(capfd.readouterr())


def test_the_shipped_default_encoder_loads_without_the_unexpected_pooler_report(capfd):
    from scripts.text.encoder import ReportEncoder

    encoders = []
    printed = _printed_while(lambda: encoders.append(ReportEncoder("minilm", device="cpu")), capfd)
    assert "UNEXPECTED" not in printed and "pooler" not in printed and "LOAD REPORT" not in printed
    assert encoders[0].hidden_size == 384


def test_the_mlm_head_load_reports_its_new_head_but_not_the_pooler(capfd):
    from scripts.text.backends import load_bert

    networks = []
    printed = _printed_while(lambda: networks.append(load_bert("minilm", head="mlm")), capfd)
    assert "pooler" not in printed and "UNEXPECTED" not in printed
    assert "cls.predictions.transform.dense.weight" in printed  # a real problem (a random head) is still reported
    assert type(networks[0]).__name__ == "BertForMaskedLM"
