"""The whole official path against the official code itself: text features, both sampling loops, the preprocessing
of a CT on the atlas grid, and `monai.bundle run inference` on converted official checkpoints writing volumes in the
official atlas frame.

tests/data/official holds what the official scripts produced (tests/data/official/make_fixtures.py runs them): tiny
checkpoints in the official accelerate format, a tiny language model in the official format, the official features,
low-res samples (guidance 1 and 3), the super-resolution sample and its NIfTI, and the official preprocessing output.
The starting noise of both loops is the first and second draw of a generator seeded with the fixture's seed, which is
what the bundle's pipeline draws for that seed.

Tolerances: one evaluation within 1e-4, a whole loop within mean |diff| 1e-3 (the loop amplifies float noise; a real
mistake such as one evaluation too few moves it by 0.1 or more, which the tests show), preprocessing within float
rounding.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts import convert_official
from scripts.conventions import MEDSYN_OFFICIAL, atlas_grid_affine
from scripts.diffusion import ContinuousDDIMScheduler
from scripts.inference import MedSynPipeline
from scripts.networks import load_network
from scripts.text import ReportEncoder

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "data" / "official"
LM, BASE = OFFICIAL / "text" / "lm", OFFICIAL / "text" / "base"
SIZE = 32  # the fixtures' full grid (stage 1: 8³)
LOOP_TOLERANCE = 1e-3

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:parsing config_file")]


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(OFFICIAL / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """Both stages converted twice: training decoder order (the default) and the inference scripts' order."""
    root = tmp_path_factory.mktemp("official_weights")
    paths = {}
    for stage in ("lowres", "sr"):
        for order in ("training", "inference"):
            out = root / f"{stage}_{order}.pt"
            convert_official.convert(OFFICIAL / "checkpoints" / stage, stage, out, decoder_order=order, size=SIZE)
            paths[stage, order] = out
    return paths


@pytest.fixture(scope="module")
def encoder(converted) -> ReportEncoder:
    info = json.loads(converted["lowres", "training"].with_suffix(".json").read_text())
    return ReportEncoder.for_weights(LM, info["text_encoder_info"], "cpu", BASE)


def _unit(official: torch.Tensor) -> torch.Tensor:
    """The official loops return (x + 1) / 2 (``unnormalize_img``): back to network units, batch dropped."""
    return official[0] * 2.0 - 1.0


def _pipeline(converted, encoder, order="inference", guidance=1.0, scheduler=None) -> MedSynPipeline:
    lowres, _ = load_network(converted["lowres", order], "lowres")
    sr, _ = load_network(converted["sr", order], "sr")
    return MedSynPipeline(
        lowres,
        sr,
        text_encoder=encoder,
        lowres_size=(SIZE // 4,) * 3,
        guidance_scale=guidance,
        device="cpu",
        progress=False,
        scheduler=scheduler or ContinuousDDIMScheduler.for_conventions(MEDSYN_OFFICIAL),
    )


# --- text ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("report", ["short", "long"])
def test_text_features_reproduce_the_official_language_model_step(encoder, expected, report):
    """src/extract_text_feature.py: the bare fine-tuned model over its base, 2048 tokens read, 192 states kept."""
    features = encoder.encode(expected["reports"][report])
    torch.testing.assert_close(features, expected["text_features"][report], atol=1e-5, rtol=0)


def test_reading_only_192_tokens_would_change_a_long_reports_features(expected):
    short_context = ReportEncoder(LM, device="cpu", base_model=BASE, text_input="raw")  # context = the 192 kept
    difference = short_context.encode(expected["reports"]["long"]) - expected["text_features"]["long"]
    assert difference.abs().max() > 0.1


def test_the_official_language_model_must_be_complete(tmp_path):
    state = torch.load(LM / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.output.dense.weight"]
    (tmp_path / "lm").mkdir()
    torch.save(state, tmp_path / "lm" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing.*encoder.layer.1.output.dense.weight"):
        ReportEncoder(tmp_path / "lm", device="cpu", base_model=BASE)


# --- the sampling loops ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_lowres_loop_reproduces_the_official_sampling(converted, encoder, expected, guidance):
    """src/eval_low_res_given_prompt.py: 51 evaluations for 50 steps, the EMA weights, the inference decoder order."""
    pipeline = _pipeline(converted, encoder, guidance=guidance)
    pipeline.sr_network = None
    out = pipeline(expected["reports"][expected["prompt"]], 0, noise_lowres=expected["noise"]["lowres"])
    reference = _unit(expected["lowres_samples"][str(guidance)])
    assert (out.lowres - reference).abs().mean() < LOOP_TOLERANCE


def test_lowres_loop_tells_real_mistakes_apart(converted, encoder, expected):
    """One evaluation too few, or the training decoder order, is far outside the tolerance: the test can fail."""
    reference = _unit(expected["lowres_samples"]["1.0"])
    prompt, noise = expected["reports"][expected["prompt"]], expected["noise"]["lowres"]
    for pipeline in (
        _pipeline(converted, encoder, scheduler=ContinuousDDIMScheduler(set_alpha_to_one=True)),  # 50 evaluations
        _pipeline(converted, encoder, order="training"),
    ):
        pipeline.sr_network = None
        assert (pipeline(prompt, 0, noise_lowres=noise).lowres - reference).abs().mean() > 50 * LOOP_TOLERANCE


def test_cascade_reproduces_the_official_super_resolution(converted, encoder, expected):
    """src/eval_super_res.py on the official low-res sample: 21 evaluations, the live weights, the whole volume."""
    pipeline = _pipeline(converted, encoder)
    pipeline.sr_roi_size = "auto"  # the whole volume fits: the official whole-volume computation
    out = pipeline(
        expected["reports"][expected["prompt"]],
        0,
        noise_lowres=expected["noise"]["lowres"],
        noise_sr=expected["noise"]["sr"],
    )
    assert out.sr_tile is None
    assert (out.volume - _unit(expected["sr_sample"])).abs().mean() < LOOP_TOLERANCE


def test_the_seed_draws_the_noise_the_fixtures_gave(expected):
    generator = torch.Generator().manual_seed(expected["seed"])
    assert torch.equal(torch.randn(expected["noise"]["lowres"].shape, generator=generator), expected["noise"]["lowres"])
    assert torch.equal(torch.randn(expected["noise"]["sr"].shape, generator=generator), expected["noise"]["sr"])


def test_given_noise_of_the_wrong_shape_is_refused(converted, encoder):
    pipeline = _pipeline(converted, encoder)
    with pytest.raises(ValueError, match=r"noise_lowres must be .*\(1, 4, 8, 8, 8\)"):
        pipeline(None, 0, noise_lowres=torch.zeros(1, 4, 8, 8, 4))


# --- preprocessing -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_atlas_preprocessing_reproduces_the_official_resize(tmp_path, expected):
    """preprocess/3_transform_image.py (CT) and the first upload's 5_transform_lung_mask.py (lobes) on a CT and lobe
    map on the atlas grid, read from NIfTI in the atlas's LAS orientation."""
    from scripts.data.transforms import build_channel_preprocessing

    spec = importlib.util.spec_from_file_location("atlas_ct", OFFICIAL / "atlas_ct.py")
    atlas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atlas)
    ct, lobe = atlas.atlas_ct()
    nib.save(nib.Nifti1Image(ct, atlas.AFFINE), tmp_path / "ct.nii")
    nib.save(nib.Nifti1Image(lobe, atlas.AFFINE), tmp_path / "lobe.nii")
    del ct, lobe
    chain = build_channel_preprocessing(["image", "lobe"], None, 256, "atlas", MEDSYN_OFFICIAL)
    out = chain({"image": str(tmp_path / "ct.nii"), "lobe": str(tmp_path / "lobe.nii")})
    np.testing.assert_allclose(out["image"].affine.numpy(), atlas_grid_affine(256))  # the atlas world frame
    volumes = {
        "ct": MEDSYN_OFFICIAL.to_network(out["image"][0].numpy()).astype(np.float64),
        "lobe": MEDSYN_OFFICIAL.decode("lobe", MEDSYN_OFFICIAL.to_network(out["lobe"][0].numpy())).astype(np.float64),
    }
    for key, volume in volumes.items():
        reference = expected["preprocess"][key]
        np.testing.assert_allclose(volume[3::7, 3::7, 3::7], reference["strided"].numpy(), atol=1e-5, rtol=0)
        for axis, profile in enumerate(reference["profiles"]):
            mean = volume.mean(axis=tuple(a for a in range(3) if a != axis))
            np.testing.assert_allclose(mean, profile.numpy(), atol=1e-5, rtol=0)


def test_a_ct_off_the_atlas_grid_is_refused_in_one_line(tmp_path):
    from scripts.data.transforms import build_channel_preprocessing

    nib.save(nib.Nifti1Image(np.zeros((40, 40, 30), np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "ct.nii")
    chain = build_channel_preprocessing(["image"], None, 256, "atlas", MEDSYN_OFFICIAL)
    with pytest.raises(Exception) as err:
        chain({"image": str(tmp_path / "ct.nii")})
    cause = err.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert "not on the MedSyn atlas grid" in str(cause) and "--size_mode pad_crop" in str(cause)


# --- the commands, end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_convert_then_bundle_inference_writes_the_official_volume_in_the_atlas_frame(tmp_path, expected):
    """The README's commands: convert both official checkpoints, then `monai.bundle run inference` with the official
    language model. With the inference decoder order and the fixtures' seed the written CT is the official one."""
    weights = {}
    for stage in ("lowres", "sr"):
        weights[stage] = tmp_path / f"{stage}.pt"
        convert = [
            sys.executable,
            "-m",
            "scripts.convert_official",
            "--checkpoint",
            str(OFFICIAL / "checkpoints" / stage),
        ]
        convert += ["--stage", stage, "--out", str(weights[stage]), "--size", str(SIZE), "--decoder_order", "inference"]
        done = subprocess.run(convert, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.json"]
    command += ["--lowres_weights", str(weights["lowres"]), "--sr_weights", str(weights["sr"])]
    command += ["--text_encoder", str(LM), "--text_encoder_base", str(BASE), "--output_dir", str(tmp_path / "out")]
    command += ["--prompt", expected["reports"][expected["prompt"]], "--seed", str(expected["seed"])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    sample = f"prompt_seed{expected['seed']}"
    ours = nib.load(tmp_path / "out" / f"{sample}_ct.nii.gz")
    np.testing.assert_allclose(ours.affine, atlas_grid_affine(SIZE))  # the official atlas frame, RAS
    # the official writer (src/eval_super_res.py save_nii) flips H and writes an identity-direction ITK image: LPS
    official = nib.load(OFFICIAL / "official_sr_ct.nii.gz")
    assert nib.aff2axcodes(official.affine) == ("L", "P", "S")
    ours_ras = nib.as_closest_canonical(ours).get_fdata()
    official_ras = nib.as_closest_canonical(official).get_fdata()
    # the official HU are (x + 1) / 2 * 1624 - 1024 truncated to int16 (no rounding); ours rounded: within 1 HU
    assert np.abs(ours_ras - official_ras).mean() < 1.0 + LOOP_TOLERANCE * 812

    sidecar = json.loads((tmp_path / "out" / f"{sample}.json").read_text())
    assert sidecar["conventions"] == "medsyn-official" and sidecar["sr_whole_volume"] is True
    assert sidecar["network_evaluations"] == {"lowres": 51, "sr": 21}
    # masks: the official {0, 1} encoding, cut at 0.5, in the same frame as the CT
    reference = MEDSYN_OFFICIAL.to_ras(_unit(expected["sr_sample"]).numpy())
    for index, name in ((1, "lobe"), (2, "airway"), (3, "vessel")):
        mask = np.asarray(nib.load(tmp_path / "out" / f"{sample}_{name}.nii.gz").dataobj)
        decoded = MEDSYN_OFFICIAL.decode(name, reference[index])
        assert (mask != decoded).mean() < 0.01, name


@pytest.mark.slow
def test_segment_workflow_on_official_weights_returns_labels_on_the_atlas_grid(converted, tmp_path):
    """The segmentation entry (MONAI Label's path) with official weights: a CT on the atlas grid goes through the
    official resize, the joint model holds it and samples the masks, and the label map comes back on the atlas grid."""
    from monai.bundle import create_workflow

    from scripts.inference.segmentation import export_weights

    model = export_weights(converted["lowres", "training"], converted["sr", "training"], tmp_path / "model.pt")
    spec = importlib.util.spec_from_file_location("atlas_ct", OFFICIAL / "atlas_ct.py")
    atlas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atlas)
    ct = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(atlas.atlas_ct()[0], atlas.AFFINE), ct)
    overrides = {
        "lowres_weights": str(converted["lowres", "training"]),
        "sr_weights": str(converted["sr", "training"]),
        "segment_weights": str(model),
        "steps_lowres": 2,
        "steps_sr": 2,
        "device": "cpu",
        "image": str(ct),
        "output_dir": str(tmp_path / "out"),
    }
    config = str(ROOT / "configs" / "inference.json")
    workflow = create_workflow(config_file=config, workflow_type="infer", logging_file=False, **overrides)
    workflow.initialize()
    workflow.run()
    label = nib.load(tmp_path / "out" / "ct_seg.nii.gz")
    assert label.shape == atlas.SHAPE and label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label.affine, atlas.AFFINE, atol=1e-4)
