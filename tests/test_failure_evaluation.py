"""The evaluation refuses what would give silently wrong figures, and says what is wrong before any compute."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scripts.data.io import ras_affine, write_nifti
from scripts.evaluation.run import run_evaluation


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from scripts.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("phantom"), 3, size=32, seed=0, val_fraction=0.34)


def _run(tmp_path, **kwargs):
    options = dict(parts=["measures"], synthetic_glob="**/ct.nii.gz", progress=False)
    return run_evaluation(tmp_path / "eval", **{**options, **kwargs})


def test_label_maps_given_as_real_cts_are_refused(phantom, tmp_path):
    content = json.loads(phantom.read_text())
    for item in content["validation"]:
        item["image"] = item["lobe"]
    labels = phantom.parent / "labels_as_ct.json"
    labels.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="looks like a label map, not a CT in HU") as raised:
        _run(tmp_path, synthetic_dir=phantom.parent, real_datalist=labels)
    assert "lobe.nii.gz" in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "eval").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.linspace(0.0, 1.0, 512).reshape(8, 8, 8), "no air"),  # normalised intensities, not HU
        (np.full((8, 8, 8), np.nan), "NaN"),
        (np.zeros((8, 8, 1)) - 1000, "not a 3D CT volume"),
    ],
)
def test_synthetic_volumes_that_are_not_ct_are_refused(phantom, tmp_path, volume, message):
    folder = tmp_path / "synthetic"
    write_nifti(folder / "x_ct.nii.gz", volume, ras_affine((1, 1, 1), volume.shape), "float32")
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, synthetic_dir=folder, synthetic_glob="*ct.nii.gz", real_datalist=phantom)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"synthetic_dir": "EMPTY"}, "no files match"),
        ({"real_datalist": "none.json"}, "none.json: no such datalist; set real_datalist"),
        ({"real_split": "test"}, "no split 'test'"),
    ],
)
def test_missing_inputs_fail_in_one_line_before_the_networks_load(phantom, tmp_path, monkeypatch, kwargs, message):
    from scripts.evaluation import features

    monkeypatch.setattr(features, "medicalnet_resnet50", lambda *a: pytest.fail("loaded a network first"))
    (tmp_path / "empty").mkdir()
    options = {"synthetic_dir": phantom.parent, "real_datalist": phantom, **kwargs}
    options = {
        k: (tmp_path / "empty" if v == "EMPTY" else tmp_path / v if v == "none.json" else v) for k, v in options.items()
    }
    with pytest.raises((ValueError, FileNotFoundError), match=message) as raised:
        _run(tmp_path, parts=["measures", "fid"], **options)
    assert "\n" not in str(raised.value)


def test_text_use_pairs_with_the_same_findings_share_their_cases(tmp_path):
    from scripts.evaluation.adherence import load_pairs
    from scripts.evaluation.text_use import text_use_study
    from scripts.networks import build_network, save_network

    torch.manual_seed(0)
    network = build_network("tiny", "lowres", context_dim=384)
    data = {"spacing": [10.0, 10.0, 10.0], "size": 32, "size_mode": "pad_crop"}
    weights = save_network(tmp_path / "w.pt", network, network.config, "lowres", text_encoder="minilm", data=data)
    pair = json.loads(open("configs/adherence_pairs_phantom.json").read())["pairs"][0]
    rephrased = {**pair, "name": "effusion, other words", "finding": pair["finding"].replace("large", "big")}
    results = text_use_study(weights, load_pairs([pair, rephrased]), num=2, size=32, seed=3, times=(0.5,), noises=1)
    assert [r["name"] for r in results] == ["effusion", "effusion, other words"]
    assert results[0]["loss"]["own"] == results[1]["loss"]["own"]  # the same cases, the same noise
