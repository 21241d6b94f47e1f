"""Hostile inputs outside inference: what a user's files and the libraries print must not alarm or mislead."""

from __future__ import annotations

import logging

import pytest
import torch


def _bert_folder(path, extra: bool):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = BertModel(config)  # with the pooler, as checkpoints such as all-MiniLM-L6-v2 hold it
    if extra:
        model.register_buffer("stray", torch.zeros(2))  # a key no BertModel has
    model.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("extra", [False, True])
def test_text_encoder_loads_without_a_report_about_the_unused_pooler(tmp_path, capsys, extra):
    from scripts.text.backends import load_bert

    folder = _bert_folder(tmp_path / "bert", extra)
    capsys.readouterr()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # transformers' loggers may not propagate to the root: listen on its own
    logging.getLogger("transformers").addHandler(handler)
    try:
        network = load_bert(folder)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    printed = "".join(r.getMessage() for r in records) + "".join(capsys.readouterr())
    assert network.pooler is None and "pooler.dense" not in printed and "Loading weights" not in printed
    assert ("stray | UNEXPECTED" in printed) == extra  # any other unexpected key is still reported


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json"])
def test_a_prompt_file_that_is_not_utf8_is_refused_with_the_byte_offset(tmp_path, suffix):
    from scripts.inference.prompts import read_prompts
    from scripts.text.reports import ReportError

    text = {".txt": "Findings: côte.", ".csv": "report\nFindings: côte.\n", ".json": '["Findings: côte."]'}[suffix]
    path = tmp_path / f"reports{suffix}"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xf4")
    with pytest.raises(ReportError, match=f"byte {offset} \\(0xf4\\) is not UTF-8; save the file as UTF-8"):
        read_prompts(prompt_file=path)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # UTF-8 with a byte-order mark (Windows editors)
    assert read_prompts(prompt_file=path)[0].text.startswith("Findings: côte.")


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_anatomy_into_the_dataset_folder_replaces_nothing(tmp_path, capsys):
    from scripts.anatomy.__main__ import main
    from scripts.phantom import write_dataset

    datalist = write_dataset(tmp_path / "data", 2, size=32, seed=0)
    before = _tree(tmp_path / "data")
    args = ["--datalist", str(datalist), "--out", str(tmp_path / "data"), "--backend", "classical", "--no_progress"]
    assert main(args) == 2 and "would replace the input datalist" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_bytes(datalist.read_bytes())
    assert main([*args[:1], str(other), *args[2:]]) == 2
    assert "6 mask files under --out" in capsys.readouterr().err
    assert _tree(tmp_path / "data") == before  # the dataset's masks and datalist are untouched


def test_anatomy_rerun_redoes_an_interrupted_case_and_clears_its_temporaries(tmp_path):
    from scripts.anatomy.batch import MARKER, make_masks
    from scripts.phantom import write_dataset

    datalist = write_dataset(tmp_path / "data", 2, size=32, seed=0)
    out = tmp_path / "masks"
    make_masks(datalist, out, backend="classical", progress=False)
    case = sorted(p for p in out.iterdir() if p.is_dir())[1]
    (case / MARKER).unlink()  # killed after the masks, before the marker
    stale = case / ".lobe.nii.gz.x1y2.tmp.nii.gz"
    stale.write_bytes(b"half a mask")
    summary = make_masks(datalist, out, backend="classical", progress=False)
    assert [r.status for r in summary.results] == ["skipped", "done"] and not stale.exists()
