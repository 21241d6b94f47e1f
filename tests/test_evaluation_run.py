"""The evaluation command end to end on a tiny phantom data set (random-weight networks: a smoke test)."""

from __future__ import annotations

import json

import pytest

from scripts.evaluation import run
from scripts.phantom import write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    write_dataset(root / "real", num=4, size=32, seed=10, findings="normal")
    write_dataset(root / "synthetic", num=2, size=32, seed=20, findings="normal")
    return root


def test_run_writes_report_json_and_figures(data):
    out = data / "report"
    result = run.run_evaluation(
        out,
        ["measures", "fid", "fid_2p5d", "memorisation"],
        data / "synthetic",
        real_datalist=data / "real" / "datalist.json",
        real_split="training",
        slice_step=16,
        random_weights=True,
        progress=False,
    )
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"measures", "distances", "memorisation"}
    distances = report["results"]["distances"]
    assert distances["n_synthetic"] == 2 and distances["n_real"] == 3 and "random weights" in distances["network"]
    assert set(distances["fid_2p5d"]) == {"xy", "yz", "zx", "mean"}
    assert (
        report["results"]["measures"]["summary"]["synthetic"]["cardiothoracic_ratio"]["n"]
        + report["results"]["measures"]["summary"]["synthetic"]["cardiothoracic_ratio"]["missing"]
        == 2
    )
    text = (out / "report.md").read_text()
    assert "## Distribution distances" in text and "memorisation_closest.png" in text
    assert (out / "memorisation_closest.png").is_file()
    assert result["paths"]["markdown"] == out / "report.md"
    for refuse in (False, "false"):  # "false" is what `monai.bundle run evaluate --overwrite false` passes
        with pytest.raises(FileExistsError, match="overwrite"):
            run.run_evaluation(
                out,
                ["measures"],
                data / "synthetic",
                real_datalist=data / "real" / "datalist.json",
                real_split="training",
                progress=False,
                overwrite=refuse,
            )
    with pytest.raises(ValueError, match="--overwrite must be true or false, got 'maybe'"):
        run.run_evaluation(out, ["measures"], data / "synthetic", overwrite="maybe")


def test_missing_inputs_and_weights_fail_before_any_work(data, tmp_path):
    with pytest.raises(ValueError, match="needs synthetic_dir"):
        run.run_evaluation(tmp_path / "a", ["fid"])
    with pytest.raises(ValueError, match="unknown parts"):
        run.run_evaluation(tmp_path / "a", ["everything"])
    yml = tmp_path / "large_files.yml"
    yml.write_text("large_files: []\n")
    with pytest.raises(FileNotFoundError, match="medicalnet_resnet50 weights not found"):
        run.run_evaluation(
            tmp_path / "a",
            ["fid"],
            data / "synthetic",
            real_datalist=data / "real" / "datalist.json",
            large_files=yml,
            progress=False,
        )
    assert not (tmp_path / "a").exists()


def test_bundle_config_runs_through_monai_bundle(data, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config("configs/evaluate.json")
    parser["output_dir"] = str(tmp_path / "bundle")
    parser["parts"] = ["measures"]
    parser["synthetic_dir"] = str(data / "synthetic")
    parser["real_datalist"] = str(data / "real" / "datalist.json")
    parser["real_split"] = "training"
    parser["progress"] = False
    parser.get_parsed_content("evaluate")
    assert "Anatomy measures" in (tmp_path / "bundle" / "report.md").read_text()


def test_adherence_part_on_phantoms_written_with_prompt_sidecars(tmp_path):
    """The issue's fake model: the effusion prompt gives a phantom with effusion, its negation a normal one."""
    from scripts.data.io import write_json, write_nifti
    from scripts.phantom import generate_case

    pairs = [
        {
            "name": "effusion",
            "finding": "Large bilateral pleural effusions.",
            "negation": "No pleural effusion.",
            "measure": "effusion_ml",
        }
    ]
    write_json(tmp_path / "pairs.json", pairs)
    for k in range(3):
        for prompt, spec in ((pairs[0]["finding"], "effusion:bilateral:large"), (pairs[0]["negation"], "normal")):
            case = generate_case(48, seed=k, findings=spec)
            stem = tmp_path / "generated" / f"{spec.split(':')[0]}_{k}"
            write_nifti(f"{stem}_ct.nii.gz", case.ct_hu, case.affine, "int16")
            write_json(f"{stem}_ct.json", {"prompt": prompt, "seed": k})
    run.run_evaluation(
        tmp_path / "out",
        ["adherence"],
        adherence_dir=tmp_path / "generated",
        prompt_pairs=tmp_path / "pairs.json",
        adherence_num=3,
        progress=False,
    )
    result = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["adherence"]["pairs"][0]
    assert result["finding"]["mean"] > 1500 and result["negation"]["mean"] < 20
    assert result["p"] < 1e-3
    assert (tmp_path / "out" / "adherence_boxplot.png").is_file()
    header = (tmp_path / "out" / "report.md").read_text().split("## ")[0]
    assert "- adherence: " in header and "generated" in header and "synthetic:" not in header and "real:" not in header
