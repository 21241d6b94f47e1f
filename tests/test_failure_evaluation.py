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
        (np.arange(512).reshape(8, 8, 8) % 8, r"whole numbers 0\.\.7 only \(uint8\): this looks like a label map"),
    ],
)
def test_synthetic_volumes_that_are_not_ct_are_refused(phantom, tmp_path, volume, message):
    folder = tmp_path / "synthetic"
    dtype = "uint8" if volume.dtype.kind == "i" else "float32"
    write_nifti(folder / "x_ct.nii.gz", volume, ras_affine((1, 1, 1), volume.shape), dtype)
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
        _run(tmp_path, parts=["measures", "fid"], random_weights=True, **options)  # the weights are checked first
    assert "\n" not in str(raised.value)


def test_missing_medicalnet_weights_with_the_default_parts_fail_in_one_line_before_any_volume_is_read(
    phantom, tmp_path, monkeypatch
):
    from scripts.evaluation import data

    monkeypatch.setattr(data, "read_ct", lambda *a: pytest.fail("read a volume before finding the weights"))
    yml = tmp_path / "large_files.yml"
    yml.write_text("large_files: []\n")
    with pytest.raises(FileNotFoundError, match="medicalnet_resnet50 weights not found at") as raised:
        run_evaluation(tmp_path / "eval", synthetic_dir=phantom.parent, real_datalist=phantom, large_files=yml)
    message = str(raised.value)
    assert str(tmp_path / "models" / "medicalnet") in message and "--weights#medicalnet_resnet50" in message
    assert "\n" not in message and not (tmp_path / "eval").exists()
    # a MedicalNet path given for the memorisation audit is not skipped when it is absent (NCC only is for no path)
    with pytest.raises(FileNotFoundError, match="none.pth: pass the path of an existing file"):
        run_evaluation(
            tmp_path / "eval",
            ["memorisation"],
            synthetic_dir=phantom.parent,
            real_datalist=phantom,
            medicalnet_weights=tmp_path / "none.pth",
        )


def test_a_four_dimensional_ct_with_one_volume_is_read_as_3d(tmp_path):
    import nibabel as nib

    from scripts.evaluation.data import read_ct

    volume = np.full((8, 8, 8, 1), -1000.0)
    volume[2:6, 2:6, 2:6] = 40.0
    nib.save(nib.Nifti1Image(volume.astype(np.int16), ras_affine((2, 2, 2), (8, 8, 8))), tmp_path / "ct.nii.gz")
    ct, spacing = read_ct(tmp_path / "ct.nii.gz")
    assert ct.shape == (8, 8, 8) and ct.dtype == np.float32 and spacing == pytest.approx((2, 2, 2))


def test_adherence_volumes_are_checked_before_the_other_parts_run(phantom, tmp_path, monkeypatch):
    from scripts.data.io import write_json
    from scripts.evaluation import anatomy_measures

    monkeypatch.setattr(anatomy_measures, "measure_ct", lambda *a, **k: pytest.fail("measured before the check"))
    pair = {"name": "effusion", "finding": "Effusion.", "negation": "No effusion.", "measure": "effusion_ml"}
    write_json(tmp_path / "pairs.json", [pair])
    item = json.loads(phantom.read_text())["training"][0]
    generated = tmp_path / "generated"
    generated.mkdir()
    for k, prompt in enumerate((pair["finding"], pair["negation"])):  # each sidecar names a label map
        write_json(generated / f"s{k}.json", {"prompt": prompt, "image": str(phantom.parent / item["lobe"])})
    options = dict(adherence_dir=generated, prompt_pairs=tmp_path / "pairs.json", adherence_num=1)
    with pytest.raises(ValueError, match="lobe.nii.gz: .*looks like a label map") as raised:
        _run(tmp_path, parts=["measures", "adherence"], synthetic_dir=phantom.parent, real_datalist=phantom, **options)
    assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="generated: 1 volumes for the prompt 'Effusion.', 2 asked for"):
        _run(
            tmp_path,
            parts=["measures", "adherence"],
            synthetic_dir=phantom.parent,
            real_datalist=phantom,
            **{**options, "adherence_num": 2},
        )


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
    # the same findings written another way (case, spaces, order of side and severity) are the same cases too
    respelled = {**rephrased, "name": "effusion, respelled", "phantom_findings": "Effusion: large : bilateral"}
    pairs = load_pairs([pair, rephrased, respelled])
    results = text_use_study(weights, pairs, num=2, size=32, seed=3, times=(0.5,), noises=1)
    assert [r["name"] for r in results] == ["effusion", "effusion, other words", "effusion, respelled"]
    assert results[0]["loss"]["own"] == results[1]["loss"]["own"] == results[2]["loss"]["own"]  # same cases, noise
    # a spec that does not parse is named with its pair before the network loads (the weights here do not exist)
    bad = load_pairs([{**pair, "name": "typo", "phantom_findings": "efusion:large"}])
    with pytest.raises(ValueError, match="pair 'typo': phantom_findings: unknown finding 'efusion'"):
        text_use_study(tmp_path / "none.pt", bad, num=2, size=32)
