"""Merging datalists: paths keep pointing at the same files from the merged file's folder, ids stay unique."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.data.datalist import load_datalist, merge_datalists
from scripts.data.merge import main as merge_main


def write_source(folder: Path, n_train: int, n_val: int) -> Path:
    """A phantom-style datalist with relative paths (files are empty: only their paths matter here)."""
    items = []
    for i in range(n_train + n_val):
        case = folder / f"case_{i:04d}"
        case.mkdir(parents=True)
        for name in ("ct", "lobe", "airway", "vessel"):
            (case / f"{name}.nii.gz").touch()
        (case / "truth.json").write_text("{}")
        items.append(
            {
                "id": f"case_{i:04d}",
                "image": f"case_{i:04d}/ct.nii.gz",
                "lobe": f"case_{i:04d}/lobe.nii.gz",
                "airway": f"case_{i:04d}/airway.nii.gz",
                "vessel": str(case / "vessel.nii.gz"),  # absolute paths stay as they are
                "report": f"report {i}",
                "truth": f"case_{i:04d}/truth.json",
            }
        )
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": items[:n_train], "validation": items[n_train:]}))
    return path


def test_merged_datalist_names_the_same_files_with_unique_ids(tmp_path):
    sources = [write_source(tmp_path / "s0", 3, 1), write_source(tmp_path / "s1", 2, 2)]
    merged = tmp_path / "merged" / "all.json"
    assert merge_datalists(sources, merged) == {"training": 5, "validation": 3}

    for section in ("training", "validation"):
        expected = [item for source in sources for item in load_datalist(source, section=section)]
        got = load_datalist(merged, section=section)
        keys = ("image", "lobe", "airway", "vessel")
        assert [[Path(i[k]).resolve() for k in keys] for i in got] == [
            [Path(i[k]).resolve() for k in keys] for i in expected
        ]
        assert [i["report"] for i in got] == [i["report"] for i in expected]
    items = json.loads(merged.read_text())
    ids = [i["id"] for section in items.values() for i in section]
    assert len(set(ids)) == len(ids) and ids[0] == "s0_case_0000"
    truth = merged.parent / items["training"][0]["truth"]
    assert truth.resolve() == (tmp_path / "s0" / "case_0000" / "truth.json").resolve()


def test_merge_subsets_and_refuses_to_overwrite(tmp_path, capsys):
    sources = [str(write_source(tmp_path / f"s{k}", 3, 2)) for k in range(3)]
    out = tmp_path / "sr.json"
    assert merge_main([*sources, "--out", str(out), "--training_per_source", "1", "--validation_limit", "2"]) == 0
    items = json.loads(out.read_text())
    assert [i["id"] for i in items["training"]] == ["s0_case_0000", "s1_case_0000", "s2_case_0000"]
    assert [i["id"] for i in items["validation"]] == ["s0_case_0003", "s0_case_0004"]

    assert merge_main([*sources, "--out", str(out)]) == 2  # exists: nothing replaced without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert merge_main([*sources, "--out", str(out), "--overwrite"]) == 0
    assert merge_main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert "datalist not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no source"):
        merge_datalists([], out)
