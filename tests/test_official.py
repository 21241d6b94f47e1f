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


def test_loops_tell_real_mistakes_apart(converted, encoder, expected):
    """One evaluation too few per stage (50 / 20), or the training decoder order, is far outside the tolerance in
    both stages (docs/official_weights.md: 0.21 / 0.28 and 0.35 / 0.32): the loop tests can fail."""
    lowres_reference, sr_reference = _unit(expected["lowres_samples"]["1.0"]), _unit(expected["sr_sample"])
    prompt, noise = expected["reports"][expected["prompt"]], expected["noise"]
    for pipeline in (
        _pipeline(converted, encoder, scheduler=ContinuousDDIMScheduler(set_alpha_to_one=True)),  # 50 + 20 evaluations
        _pipeline(converted, encoder, order="training"),
    ):
        out = pipeline(prompt, 0, noise_lowres=noise["lowres"], noise_sr=noise["sr"])
        assert (out.lowres - lowres_reference).abs().mean() > 50 * LOOP_TOLERANCE
        assert (out.volume - sr_reference).abs().mean() > 50 * LOOP_TOLERANCE


def test_tiled_super_resolution_is_an_approximation(converted, encoder, expected):
    """16-slice slabs of the 32-slice volume (GroupNorm statistics per tile): far from the whole-volume result."""
    pipeline = _pipeline(converted, encoder)
    pipeline.sr_roi_size = (16, -1, -1)
    out = pipeline(
        expected["reports"][expected["prompt"]],
        0,
        noise_lowres=expected["noise"]["lowres"],
        noise_sr=expected["noise"]["sr"],
    )
    assert out.sr_tile == (16, -1, -1)
    assert (out.volume - _unit(expected["sr_sample"])).abs().mean() > 50 * LOOP_TOLERANCE


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


def test_a_ct_off_the_atlas_grid_is_refused_in_one_line(converted, encoder, tmp_path):
    from scripts.inference.workflow import InferenceRunner

    nib.save(nib.Nifti1Image(np.zeros((40, 40, 30), np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "ct.nii")
    runner = InferenceRunner(
        converted["lowres", "training"], converted["sr", "training"], tmp_path / "out", text_encoder=encoder
    )
    with pytest.raises(SystemExit) as err:
        runner.run(image=str(tmp_path / "ct.nii"))
    message = str(err.value)
    assert message.startswith("medsyn inference failed: DataError:") and len(message.splitlines()) == 1
    assert "not on the MedSyn atlas grid" in message and "--size_mode pad_crop" in message


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
    assert sidecar["conventions"] == MEDSYN_OFFICIAL.as_dict() and sidecar["sr_whole_volume"] is True
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


# --- the conventions cannot be mixed up ---------------------------------------------------------------------------------


def test_stages_with_different_conventions_are_refused(converted, tmp_path):
    from scripts.inference.cascade import describe_cascade
    from scripts.networks import build_network, save_network

    ours = save_network(tmp_path / "sr.pt", build_network("tiny", "sr"), build_network("tiny", "sr").config, "sr")
    with pytest.raises(ValueError, match="records conventions 'medsyn-official' but .*sr.pt records 'medsyn-monai'"):
        describe_cascade(converted["lowres", "training"], ours)


def test_official_grid_and_its_overrides(converted, tmp_path):
    from scripts.inference.cascade import model_grid

    info = json.loads(converted["lowres", "training"].with_suffix(".json").read_text())
    grid = model_grid(info)
    assert grid.size_mode == "atlas" and grid.input_spacing is None
    np.testing.assert_allclose(grid.output_affine, atlas_grid_affine(SIZE))
    with pytest.raises(ValueError, match="--spacing does not apply"):
        model_grid(info, spacing=(1.0, 1.0, 1.0))
    # fine-tuned on atlas-grid data, the export records no spacing of its own: the atlas grid still applies
    fine_tuned = {**info, "data": {"spacing": None, "size": SIZE, "size_mode": "atlas"}}
    np.testing.assert_allclose(model_grid(fine_tuned).output_affine, atlas_grid_affine(SIZE))


def test_fine_tuning_official_weights_needs_their_conventions_and_text(converted):
    from scripts.engines import start_from_weights
    from scripts.networks import MedSynUNet

    weights = converted["lowres", "training"]
    network = MedSynUNet(**json.loads(weights.with_suffix(".json").read_text())["network"])
    with pytest.raises(ValueError, match="records conventions 'medsyn-official'.*set conventions"):
        start_from_weights(network, weights, "lowres", str(LM), "medsyn-monai", "raw", 2048)
    with pytest.raises(ValueError, match="text_input='raw', text_context_tokens=2048"):
        start_from_weights(network, weights, "lowres", str(LM), "medsyn-official")
    with pytest.raises(ValueError, match="official MedSyn language model: set text_model"):
        start_from_weights(network, weights, "lowres", "minilm", "medsyn-official", "raw", 2048)
    assert start_from_weights(network, weights, "lowres", str(LM), "medsyn-official", "raw", 2048) is network


def test_official_weights_refuse_any_other_text_encoder(converted):
    info = json.loads(converted["lowres", "training"].with_suffix(".json").read_text())["text_encoder_info"]
    from scripts.text import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="--text_encoder FOLDER"):
        ReportEncoder.for_weights(None, info, "cpu", BASE)
    with pytest.raises(ModelNotFoundError, match="not the official MedSyn language model"):
        ReportEncoder.for_weights(BASE, info, "cpu", BASE)  # a CXR-BERT-like folder, not the fine-tuned model
    with pytest.raises(ModelNotFoundError, match="--text_encoder_base DIR"):
        ReportEncoder.for_weights(LM, info, "cpu", BASE / "missing")


def test_training_preprocessing_under_the_official_conventions(tmp_path):
    """Masks reach the network as {0, 1} in the SAL layout, padding with each channel's background."""
    from scripts.conventions import MEDSYN_MONAI
    from scripts.data.io import ras_affine, write_nifti
    from scripts.data.transforms import build_preprocessing

    shape, affine = (12, 10, 8), ras_affine((2.0, 2.0, 2.0), (12, 10, 8))
    airway = np.zeros(shape, np.uint8)
    airway[4:8, 3:6, 2:5] = 1
    item = {
        "image": str(write_nifti(tmp_path / "ct.nii.gz", np.full(shape, -500, np.int16), affine, "int16")),
        "lobe": str(write_nifti(tmp_path / "lobe.nii.gz", airway * 3, affine, "uint8")),
        "airway": str(write_nifti(tmp_path / "airway.nii.gz", airway, affine, "uint8")),
        "vessel": str(write_nifti(tmp_path / "vessel.nii.gz", np.zeros(shape, np.uint8), affine, "uint8")),
        "report": "No effusion.",
    }
    out = {
        c.name: build_preprocessing((2.0, 2.0, 2.0), 16, lowres=False, conventions=c)(item)["image"]
        for c in (MEDSYN_MONAI, MEDSYN_OFFICIAL)
    }
    official, ours = out["medsyn-official"], out["medsyn-monai"]
    assert set(official[2].unique().tolist()) == {0.0, 1.0} and set(ours[2].unique().tolist()) == {-1.0, 1.0}
    assert official[3].eq(0.0).all() and official[1].min() == -1.0  # padded: no vessel, no lobe
    # the same volume, laid out for each network: back in RAS both agree
    np.testing.assert_array_equal(
        MEDSYN_OFFICIAL.to_ras(official.numpy())[[0, 1]], MEDSYN_MONAI.to_ras(ours.numpy())[[0, 1]]
    )
    assert nib.aff2axcodes(official.affine.numpy()) == tuple("SAL")


def test_raw_text_has_its_own_cache_and_readers_know_it(tmp_path, expected):
    from scripts.text.cache import EmbeddingCache
    from scripts.text.encoder import prepare_text

    encoder = ReportEncoder(LM, device="cpu", base_model=BASE, text_input="raw", context_tokens=2048)
    writer = EmbeddingCache(tmp_path, encoder, dtype="float32")
    report = "Findings: There is cardiomegaly.\nImpression: Cardiomegaly."
    features = writer.get([report])
    assert writer.key.endswith("_raw")
    reader = EmbeddingCache(tmp_path, key=writer.key)
    assert reader.text_input == "raw" and reader.path_for(report).is_file()
    assert prepare_text(report, "raw") == report != prepare_text(report, "sections")
    torch.testing.assert_close(reader.get([report]), features)
