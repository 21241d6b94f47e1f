"""Inference on tiny random-weight networks: files, affines, reproducibility, anatomy control, errors."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist

from scripts.conventions import MEDSYN_MONAI, MEDSYN_OFFICIAL, ct_to_int16_hu, decode_lobe
from scripts.data.io import OutputExistsError, ras_affine, write_nifti
from scripts.diffusion import downsample_nearest
from scripts.inference import MedSynPipeline, SlidingWindowNetwork, read_prompts
from scripts.inference.workflow import InferenceRunner
from scripts.networks import build_network, preset_config, save_network
from scripts.text.reports import ReportError

SIZE = 32  # final grid 32³ (low-res 8³) keeps every test fast
SPACING = (10.0, 10.0, 10.0)
REPORT = "Findings: Large right pleural effusion. Impression: Right effusion."


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    lowres_cfg = {**preset_config("tiny", "lowres"), "context_dim": 384}  # all-MiniLM-L6-v2 features
    sr_cfg = preset_config("tiny", "sr")
    data = {"spacing": list(SPACING), "size": SIZE, "size_mode": "pad_crop"}
    lowres = save_network(
        root / "lowres.pt",
        build_network("tiny", "lowres", context_dim=384),
        lowres_cfg,
        "lowres",
        text_encoder="minilm",
        data=data,
    )
    sr = save_network(root / "sr.pt", build_network("tiny", "sr"), sr_cfg, "sr", data=data)
    return lowres, sr


@pytest.fixture(scope="module")
def encoder():
    from scripts.text import ReportEncoder

    return ReportEncoder("minilm", device="cpu")


@pytest.fixture
def runner(weights, encoder):
    def make(out, **kwargs):
        options = dict(sr_weights=weights[1], steps_lowres=2, steps_sr=2, device="cpu", progress=False)
        return InferenceRunner(weights[0], output_dir=out, text_encoder=encoder, **{**options, **kwargs})

    return make


def test_generation_writes_labelled_nifti_with_affine_and_sidecar(runner, weights, tmp_path):
    (paths,) = runner(tmp_path).generate(prompt=REPORT, seed=3)
    ct = nib.load(str(paths["ct"]))
    assert ct.shape == (SIZE,) * 3 and ct.get_data_dtype() == np.int16
    np.testing.assert_allclose(ct.affine, ras_affine(SPACING, (SIZE,) * 3))
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    hu = np.asarray(ct.dataobj)
    assert hu.min() >= -1024 and hu.max() <= 600
    for name, top in (("lobe", 5), ("airway", 1), ("vessel", 1)):
        mask = nib.load(str(paths[name]))
        assert mask.get_data_dtype() == np.uint8 and np.asarray(mask.dataobj).max() <= top
    sidecar = json.loads(paths["json"].read_text())
    assert sidecar["synthetic"] is True and sidecar["prompt"] == REPORT and sidecar["seed"] == 3
    assert sidecar["steps_lowres"] == 2 and sidecar["weights"]["lowres"].endswith("lowres.pt")
    assert paths["png"].stat().st_size > 1000 and paths["json"].name == "prompt_seed3.json"


def test_same_seed_same_volume_and_no_silent_overwrite(runner, weights, tmp_path):
    first = runner(tmp_path / "a").generate(prompt=REPORT, seed=1, num_samples=2)
    again = runner(tmp_path / "b").generate(prompt=REPORT, seed=1)
    a, b = (np.asarray(nib.load(str(p["ct"])).dataobj) for p in (first[0], again[0]))
    np.testing.assert_array_equal(a, b)
    other = np.asarray(nib.load(str(first[1]["ct"])).dataobj)
    assert not np.array_equal(a, other)  # seed 2
    with pytest.raises(OutputExistsError, match="guidance_scale differs.*--overwrite"):  # another request
        runner(tmp_path / "a", guidance_scale=2.0).generate(prompt=REPORT, seed=1)
    runner(tmp_path / "a", guidance_scale=2.0, overwrite="true").generate(prompt=REPORT, seed=1)
    assert json.loads(first[0]["json"].read_text())["guidance_scale"] == 2.0


def _mask_case(tmp_path, shape=(40, 40, 40), spacing=(8.0, 8.0, 8.0)):
    x, y, z = np.meshgrid(*(np.arange(s) - (s - 1) / 2 for s in shape), indexing="ij")
    lobe = np.zeros(shape, np.uint8)
    lobe[(x > 3) & (np.abs(y) < 10) & (np.abs(z) < 12)] = 3
    lobe[(x < -3) & (np.abs(y) < 10) & (np.abs(z) < 12)] = 1
    ct = np.where(lobe > 0, -850, 40).astype(np.float32)
    affine = ras_affine(spacing, shape)
    paths = {
        "lobe": write_nifti(tmp_path / "lobe.nii.gz", lobe, affine, "uint8"),
        "image": write_nifti(tmp_path / "ct.nii.gz", ct, affine, "int16"),
    }
    return paths


def test_fixed_anatomy_and_segmentation_reproduce_the_inputs(runner, weights, tmp_path):
    inputs = _mask_case(tmp_path)
    run = runner(tmp_path / "out")
    fixed, affine = run.load_fixed({"lobe": inputs["lobe"], "image": inputs["image"]})

    (anatomy,) = run.generate(prompt=REPORT, lobe=str(inputs["lobe"]))
    lobe_out = np.asarray(nib.load(str(anatomy["lobe"])).dataobj)
    np.testing.assert_array_equal(lobe_out, MEDSYN_MONAI.to_ras(decode_lobe(fixed["lobe"]).numpy()))
    assert set(np.unique(lobe_out)) == {0, 1, 3}
    np.testing.assert_allclose(nib.load(str(anatomy["lobe"])).affine, affine)  # the input's world grid

    (segmentation,) = run.generate(image=str(inputs["image"]))  # no report: segmentation by the joint model
    ct_out = np.asarray(nib.load(str(segmentation["ct"])).dataobj)
    np.testing.assert_array_equal(ct_out, MEDSYN_MONAI.to_ras(ct_to_int16_hu(fixed["ct"]).numpy()))  # the CT held
    assert json.loads(segmentation["json"].read_text())["prompt"] is None
    assert segmentation["json"].name == "segmentation_seed0.json"


def test_stage_one_alone_writes_the_low_resolution_grid(runner, weights, tmp_path):
    """Without stage-2 weights the 64³-style output has 4x the spacing over the same field of view, and fixed
    inputs are held on it as stage 1 sees them (strided from the full grid)."""
    inputs = _mask_case(tmp_path)
    run = runner(tmp_path / "out", sr_weights=None)
    fixed, full_affine = run.load_fixed({"lobe": inputs["lobe"]})
    (free,) = run.generate(prompt=REPORT)
    ct = nib.load(str(free["ct"]))
    assert ct.shape == (SIZE // 4,) * 3
    np.testing.assert_allclose(ct.affine, MEDSYN_MONAI.lowres_affine(ras_affine(SPACING, (SIZE,) * 3)))
    assert json.loads(free["json"].read_text())["steps_sr"] is None

    (held,) = runner(tmp_path / "held", sr_weights=None).generate(prompt=REPORT, lobe=str(inputs["lobe"]))
    lobe_out = nib.load(str(held["lobe"]))
    np.testing.assert_allclose(lobe_out.affine, MEDSYN_MONAI.lowres_affine(full_affine))
    strided = downsample_nearest(fixed["lobe"][None, None])[0, 0]
    np.testing.assert_array_equal(np.asarray(lobe_out.dataobj), MEDSYN_MONAI.to_ras(decode_lobe(strided).numpy()))


@pytest.mark.parametrize("conventions", [MEDSYN_MONAI, MEDSYN_OFFICIAL], ids=lambda c: c.name)
def test_lowres_affine_places_each_strided_voxel_where_the_full_grid_has_it(conventions):
    full = ras_affine((1.5, 1.25, 2.0), (16, 12, 8))
    index = np.stack(np.meshgrid(*(np.arange(n) for n in (16, 12, 8)), indexing="ij")).astype(np.float64)
    world = np.einsum("ij,jxyz->ixyz", full[:3, :3], index) + full[:3, 3, None, None, None]
    network = torch.from_numpy(conventions.to_network(world).copy())
    strided = conventions.to_ras(downsample_nearest(network[None])[0].numpy())
    low = conventions.lowres_affine(full)
    low_index = np.stack(np.meshgrid(*(np.arange(n) for n in (4, 3, 2)), indexing="ij")).astype(np.float64)
    np.testing.assert_allclose(
        np.einsum("ij,jxyz->ixyz", low[:3, :3], low_index) + low[:3, 3, None, None, None], strided
    )


def test_sr_tile_from_the_command_line(runner, tmp_path):
    assert runner(tmp_path, sr_tile="null").sr_tile is None and runner(tmp_path, sr_tile="None").sr_tile is None
    assert runner(tmp_path, sr_tile=[64, -1, -1]).sr_tile == [64, -1, -1]
    with pytest.raises(ValueError, match="--sr_tile must be three sizes"):
        runner(tmp_path, sr_tile=[64, -1])


def test_bad_inputs_fail_clearly(runner, weights, tmp_path):
    with pytest.raises(ReportError, match="empty"):
        runner(tmp_path).generate(prompt="   ")
    with pytest.raises(FileNotFoundError, match="monai.bundle run training"):
        InferenceRunner(tmp_path / "missing.pt", None, tmp_path).generate(prompt=REPORT)
    with pytest.raises(ValueError, match="lowres weights are needed"):
        InferenceRunner(weights[1], None, tmp_path).generate(prompt=REPORT)
    inputs = _mask_case(tmp_path)
    odd = write_nifti(tmp_path / "odd.nii.gz", np.zeros((20, 20, 20)), ras_affine((8, 8, 8), (20,) * 3), "uint8")
    with pytest.raises(RuntimeError) as info:  # a mask on another grid than the CT
        runner(tmp_path / "x").generate(image=str(inputs["image"]), lobe=str(odd))
    assert "shape" in str(info.value.__cause__)
    with pytest.raises(SystemExit, match="medsyn inference failed: ReportError"):
        runner(tmp_path).run(prompt="")


def test_tiles_blend_without_seams():
    torch.manual_seed(0)
    net = build_network("tiny", "sr").eval()
    x = torch.randn(1, 8, 48, 16, 16) * 0.1
    t = torch.tensor([500.0])
    with torch.no_grad():
        whole = net(x, t)
        one_tile = SlidingWindowNetwork(net, roi_size=(-1, -1, -1))(x, t)
        tiled = SlidingWindowNetwork(net, roi_size=(16, -1, -1), overlap=0.5)(x, t)
    torch.testing.assert_close(one_tile, whole)  # the wrapper itself changes nothing
    assert tiled.shape == whole.shape
    # GroupNorm statistics are taken per tile, so tiles differ from the whole volume (docs: prefer deep slabs);
    # what must not appear are seams: jumps between neighbouring slices at tile borders like those elsewhere
    jumps = (tiled[:, :, 1:] - tiled[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # per slice boundary
    borders = jumps[[7, 15, 23, 31, 39]]  # boundaries where tiles start or end (tiles of 16, step 8)
    assert borders.max() < 2 * jumps.median()
    with pytest.raises(ValueError, match="roi_size"):
        SlidingWindowNetwork(net, roi_size=(0, 16, 16))


def test_prompt_files(tmp_path):
    (tmp_path / "a.csv").write_text("id,report\ncase 1,Findings: clear.\ncase 1,Impression: normal.\n")
    assert [p.id for p in read_prompts(prompt_file=tmp_path / "a.csv")] == ["case_1", "case_1_1"]
    (tmp_path / "b.json").write_text(json.dumps(["Findings: clear.", {"id": "x", "prompt": "Impression: ok."}]))
    assert [p.id for p in read_prompts(prompt_file=tmp_path / "b.json")] == ["item0000", "x"]
    (tmp_path / "c.csv").write_text("VolumeName,Findings_EN,Impressions_EN\ntrain_1_a_1.nii.gz,Clear lungs.,Normal.\n")
    (p,) = read_prompts(prompt_file=tmp_path / "c.csv")
    assert p.id == "train_1_a_1" and p.text.startswith("Findings: Clear lungs.")
    pairs = [
        {"name": "e", "finding": "Effusion.", "negation": "Normal."},
        {"name": "c", "finding": "Big heart.", "negation": "Normal."},
    ]
    (tmp_path / "pairs.json").write_text(json.dumps({"pairs": pairs}))
    found = read_prompts(prompt_file=tmp_path / "pairs.json")
    assert [(p.id, p.text) for p in found] == [
        ("e_finding", "Effusion."),
        ("e_negation", "Normal."),
        ("c_finding", "Big heart."),
    ]  # the shared negation once
    with pytest.raises(ValueError, match="exactly one"):
        read_prompts()
    with pytest.raises(ReportError, match="characters"):
        read_prompts(prompt="word " * 50_000)
    (tmp_path / "d.json").write_text(json.dumps([""]))
    with pytest.raises(ReportError, match="item 0"):
        read_prompts(prompt_file=tmp_path / "d.json")


def test_synthesize_writes_an_auto3dseg_dataset(runner, weights, tmp_path, monkeypatch):
    """A dataset that can be moved: every path relative to its folder; Auto3DSeg's own DataAnalyzer reads the moved
    copy from another working directory through auto3dseg_input."""
    import shutil

    from monai.apps.auto3dseg import DataAnalyzer

    from scripts.conventions import SEGMENTATION_LABELS
    from scripts.data.auto3dseg import auto3dseg_input

    made = tmp_path / "made"
    datalist = runner(made).synthesize(prompt=REPORT, num_samples=3, num_folds=2)
    items = load_decathlon_datalist(str(datalist), True, "training", str(made))
    assert [item["fold"] for item in items] == [0, 1, 0]
    held = set()
    for item in items:
        label = np.asarray(nib.load(item["label"]).dataobj)
        assert label.dtype == np.uint8 and label.max() <= 7
        held |= set(np.unique(label).tolist())
    index = json.loads(datalist.read_text())
    assert index["absent_labels"] == {str(k): v for k, v in SEGMENTATION_LABELS.items() if k not in held}
    assert all("/" not in item[key] for item in index["training"] for key in ("image", "label"))
    assert (made / "data_src_cfg.yaml").read_text() == "modality: CT\ndatalist: datalist.json\ndataroot: .\n"

    moved = shutil.move(str(made), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    source = auto3dseg_input(moved)
    assert source["datalist"] == str(tmp_path / "moved" / "datalist.json")
    stats = DataAnalyzer(
        source["datalist"], source["dataroot"], output_path=str(tmp_path / "stats.yaml"), device="cpu", worker=0
    ).get_all_case_stats()
    found = stats["stats_summary"]["label_stats"]["labels"]
    assert sorted(found) == sorted(held) and len(stats["stats_by_cases"]) == 3
    with pytest.raises(FileNotFoundError, match="run synthesize"):
        auto3dseg_input(tmp_path / "made")


def test_dicom_output_beside_or_instead_of_nifti(runner, tmp_path):
    """--output_format: the CT as a DICOM series and the maps as a DICOM Segmentation (tests/test_dicom.py reads
    them back); a rerun keeps the finished sample; synthesize needs NIfTI labels for Auto3DSeg."""
    import pydicom

    (both,) = runner(tmp_path / "both", output_format="both").generate(prompt=REPORT, seed=3)
    assert {"ct", "lobe", "ct_dicom", "seg_dicom"} <= both.keys() and both["ct"].is_file()
    sidecar = json.loads(both["json"].read_text())
    assert (
        sidecar["files"]["ct_dicom"] == "prompt_seed3_ct_dicom"
        and sidecar["files"]["seg_dicom"] == "prompt_seed3_seg.dcm"
    )
    first = pydicom.dcmread(str(sorted(both["ct_dicom"].iterdir())[0]))
    assert first.Modality == "CT" and "prompt_seed3" in first.SeriesDescription
    (dicom,) = runner(tmp_path / "dicom", output_format="dicom").generate(prompt=REPORT, seed=3)
    assert "ct" not in dicom and sorted(p.name for p in (tmp_path / "dicom").iterdir()) == [
        "prompt_seed3.json",
        "prompt_seed3.png",
        "prompt_seed3_ct_dicom",
        "prompt_seed3_seg.dcm",
    ]
    with pytest.raises(ValueError, match="--output_format must be one of nifti, dicom, both"):
        runner(tmp_path, output_format="DICOM")
    with pytest.raises(ValueError, match="synthesize writes an Auto3DSeg dataset of NIfTI"):
        runner(tmp_path / "dicom", output_format="dicom").synthesize(prompt=REPORT)


def test_synthesize_sharded_over_two_processes_writes_what_one_process_writes(weights, tmp_path):
    """torchrun with two CPU processes (gloo): each makes every second sample, rank 0 writes the index; the files
    equal a single process's. A rerun keeps every finished sample."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"id": "a", "report": REPORT}, {"id": "b", "report": "No effusion."}]))
    options = [
        "-m", "monai.bundle", "run", "synthesize", "--config_file", "configs/inference.json",
        "--lowres_weights", str(weights[0]), "--sr_weights", str(weights[1]), "--prompt_file", str(prompts),
        "--num_samples", "2", "--steps_lowres", "2", "--steps_sr", "2", "--sr_tile", "null", "--device", "cpu",
        "--num_folds", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    sharded = subprocess.run(
        [*torchrun, "--master_port", str(port), *options, "--output_dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    log = sharded.stdout + sharded.stderr
    assert "rank 0 of 2: 2 samples to make" in log and "rank 1 of 2: 2 samples to make" in log
    single = subprocess.run(
        [sys.executable, *options, "--output_dir", str(tmp_path / "one")], capture_output=True, text=True,
        timeout=600, env=env,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    one, two = json.loads((tmp_path / "one" / "datalist.json").read_text()), (tmp_path / "two" / "datalist.json")
    assert json.loads(two.read_text()) == one and len(one["training"]) == 4
    for item in one["training"]:
        for key in ("image", "label"):
            a, b = (np.asarray(nib.load(str(tmp_path / run / item[key])).dataobj) for run in ("one", "two"))
            np.testing.assert_array_equal(a, b)
    again = subprocess.run(
        [*torchrun, "--master_port", str(port + 1 if port < 65535 else port - 1), *options,
         "--output_dir", str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert again.returncode == 0 and "4 of 4 samples already finished" in again.stdout + again.stderr


def test_bfloat16_networks_with_a_float32_sampler_on_tiny_shapes(runner, tmp_path):
    from scripts.diffusion import AutocastDenoiser

    (full,) = runner(tmp_path / "fp32").generate(prompt=REPORT, seed=3)
    (half,) = runner(tmp_path / "bf16", precision="bfloat16").generate(prompt=REPORT, seed=3)
    assert json.loads(half["json"].read_text())["precision"] == "bfloat16"
    a, b = (np.asarray(nib.load(str(p["ct"])).dataobj).astype(float) for p in (full, half))
    assert not np.array_equal(a, b) and np.abs(a - b).mean() < 50  # HU: the networks' rounding, not another sample
    seen = []
    denoise = AutocastDenoiser(
        lambda x, t: seen.append(torch.get_autocast_dtype("cpu")) or x @ x, "cpu", torch.bfloat16
    )
    out = denoise(torch.ones(2, 2), torch.zeros(2))
    assert out.dtype == torch.float32 and seen == [torch.bfloat16]
    with pytest.raises(ValueError, match="--precision must be one of float32, bfloat16, float16"):
        runner(tmp_path, precision="half")


def test_sampler_per_stage_is_chosen_and_recorded(runner, tmp_path):
    (ddim,) = runner(tmp_path / "ddim").generate(prompt=REPORT, seed=3)
    (dpm,) = runner(tmp_path / "dpm", sampler_lowres="dpmpp_2m", sampler_sr="dpmpp_2m").generate(prompt=REPORT, seed=3)
    sidecar = json.loads(dpm["json"].read_text())
    assert (sidecar["sampler_lowres"], sidecar["sampler_sr"]) == ("dpmpp_2m (logsnr grid)",) * 2
    assert json.loads(ddim["json"].read_text())["sampler_lowres"] == "ddim"
    assert not np.array_equal(
        np.asarray(nib.load(str(ddim["ct"])).dataobj), np.asarray(nib.load(str(dpm["ct"])).dataobj)
    )
    with pytest.raises(ValueError, match="--sampler_sr must be one of ddim, dpmpp_2m"):
        runner(tmp_path, sampler_sr="euler")
    with pytest.raises(OutputExistsError, match="sampler_lowres differs"):  # not taken for the DDIM sample
        runner(tmp_path / "ddim", sampler_lowres="dpmpp_2m").generate(prompt=REPORT, seed=3)


def test_a_class_in_no_label_map_is_said(tmp_path, caplog):
    from scripts.conventions import SEGMENTATION_LABELS
    from scripts.data.auto3dseg import absent_label_classes

    for name, values in (("a.nii.gz", [0, 1, 2, 6]), ("b.nii.gz", [0, 3, 4, 5])):
        write_nifti(tmp_path / name, np.array(values, dtype=np.uint8).reshape(1, 1, 4), np.eye(4), "uint8")
    with caplog.at_level("WARNING"):
        absent = absent_label_classes(tmp_path, [{"label": "a.nii.gz"}, {"label": "b.nii.gz"}], SEGMENTATION_LABELS)
    assert absent == {7: "pulmonary vessel"}
    assert "no label map holds class 7 (pulmonary vessel); Auto3DSeg" in caplog.text
    assert absent_label_classes(tmp_path, [{"label": "a.nii.gz"}], {1: "x", 6: "y"}) == {}


def test_bundle_command_runs_and_fails_in_one_line(runner, weights, tmp_path):
    """`python -m monai.bundle run inference` exactly as documented, with the tiny weights as overrides."""
    import subprocess
    import sys

    base = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        "configs/inference.json",
        "--output_dir",
        str(tmp_path),
        "--steps_lowres",
        "2",
        "--steps_sr",
        "2",
        "--sr_tile",
        "[16,-1,-1]",
    ]
    ok = subprocess.run(
        base + ["--lowres_weights", str(weights[0]), "--sr_weights", str(weights[1]), "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "prompt_seed5_ct.nii.gz").is_file()  # the config's default report
    assert "Large right pleural effusion" in json.loads((tmp_path / "prompt_seed5.json").read_text())["prompt"]
    missing = subprocess.run(
        base + ["--lowres_weights", str(tmp_path / "none.pt")], capture_output=True, text=True, timeout=600
    )
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("medsyn inference failed: WeightsNotFoundError") and "none.pt" in last


def test_auto_tile_runs_the_whole_volume_when_it_fits_and_the_deepest_slab_that_fits_otherwise(monkeypatch):
    from scripts.inference import tiling

    network = build_network("tiny", "sr")
    spatial = (256, 256, 256)
    whole = tiling.sampling_bytes(network, spatial)
    monkeypatch.setattr(tiling, "free_memory", lambda device: int(whole / tiling.MEMORY_HEADROOM) + 1)
    assert tiling.auto_tile(network, spatial, torch.device("cpu")) is None
    budget = tiling.sampling_bytes(network, spatial, (64, -1, -1))
    monkeypatch.setattr(tiling, "free_memory", lambda device: int(budget / tiling.MEMORY_HEADROOM) + 1)
    assert tiling.auto_tile(network, spatial, torch.device("cpu")) == (64, -1, -1)
    monkeypatch.setattr(tiling, "free_memory", lambda device: 1)
    assert tiling.auto_tile(network, spatial, torch.device("cpu")) == (tiling.MIN_SLAB, -1, -1)


def test_sidecar_counts_network_evaluations(runner, tmp_path):
    run = runner(tmp_path, guidance_scale=3.0)
    (guided,) = run.generate(prompt=REPORT)
    assert json.loads(guided["json"].read_text())["network_evaluations"] == {"lowres": 4, "sr": 2}
    (free,) = run.generate(prompt=None, lobe=str(_mask_case(tmp_path)["lobe"]))  # no report: one branch
    assert json.loads(free["json"].read_text())["network_evaluations"] == {"lowres": 2, "sr": 2}


# --- bad values, interruptions and reruns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("guidance_scale", float("nan"), "--guidance_scale must be a finite number"),
        ("guidance_scale", "inf", "--guidance_scale must be a finite number"),
        ("guidance_scale", "abc", "--guidance_scale must be a number"),
        ("steps_lowres", "abc", "--steps_lowres must be a number"),
        ("steps_sr", 2.5, "--steps_sr must be a whole number"),
        ("overwrite", "maybe", "--overwrite must be true or false"),
        ("sr_tile", "abc", "--sr_tile must be three sizes"),
        ("sr_tile", [0, -1, -1], "--sr_tile sizes must be positive"),
        ("sr_overlap", 1.0, "--sr_overlap must be at most"),
        ("spacing", [1.0, float("nan"), 1.0], "--spacing must be a finite number"),
    ],
)
def test_malformed_option_values_are_named_in_one_line(runner, tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message) as raised:
        runner(tmp_path, **{option: value})
    assert "\n" not in str(raised.value)


def test_a_non_finite_sample_is_never_written(weights, tmp_path):
    from scripts.inference.writer import SampleWriter

    writer = SampleWriter(tmp_path)
    volume = torch.zeros(4, 8, 8, 8)
    volume[0, 1, 2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="1 NaN or inf values"):
        writer.write("s", volume, {"prompt": "x"}, np.eye(4))
    assert list(tmp_path.iterdir()) == []
    from scripts.data.io import json_text

    assert json.loads(json_text({"v": float("nan"), "w": [float("inf")]})) == {"v": None, "w": [None]}


def test_output_dir_that_is_a_file_is_refused_before_any_compute(runner, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = runner(blocker / "sub")
    monkeypatch.setattr(MedSynPipeline, "__call__", lambda *a, **k: pytest.fail("sampled before the check"))
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        run.generate(prompt=REPORT)
    assert blocker.read_text() == "x"


def test_rerun_keeps_finished_samples_and_remakes_an_interrupted_one(runner, tmp_path):
    first = runner(tmp_path).generate(prompt=REPORT, num_samples=2)
    kept_mtime = first[0]["ct"].stat().st_mtime_ns
    first[1]["json"].unlink()  # killed after the volumes, before the sidecar
    stale = tmp_path / f".{first[1]['ct'].name}.x1y2z3.tmp.nii.gz"
    stale.write_bytes(b"half a file")
    again = runner(tmp_path).generate(prompt=REPORT, num_samples=2)
    assert [p["json"] for p in again] == [p["json"] for p in first]
    assert first[0]["ct"].stat().st_mtime_ns == kept_mtime  # finished: kept, not sampled again
    assert json.loads(first[1]["json"].read_text())["seed"] == 1 and not stale.exists()


def test_killed_overwrite_leaves_a_visibly_incomplete_sample(runner, tmp_path, monkeypatch):
    import scripts.inference.writer as writer_module

    (old,) = runner(tmp_path).generate(prompt=REPORT)
    real_write = writer_module.write_nifti

    def die_after_ct(path, *args, **kwargs):
        if "_lobe" in str(path):
            raise KeyboardInterrupt  # stands for kill -9 halfway through the sample
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(writer_module, "write_nifti", die_after_ct)
    with pytest.raises(KeyboardInterrupt):
        runner(tmp_path, guidance_scale=3.0, overwrite=True).generate(prompt=REPORT)
    assert not old["json"].exists() and not old["png"].exists()  # no old description beside the new CT
    monkeypatch.setattr(writer_module, "write_nifti", real_write)
    runner(tmp_path, guidance_scale=3.0).generate(prompt=REPORT)  # no --overwrite needed: it was incomplete
    assert json.loads(old["json"].read_text())["guidance_scale"] == 3.0 and old["lobe"].is_file()


def test_synthesize_adds_to_the_dataset_index_instead_of_replacing_it(runner, tmp_path):
    runner(tmp_path).synthesize(prompt=REPORT, num_samples=2, num_folds=2)
    datalist = runner(tmp_path).synthesize(prompt=REPORT, seed=2, num_samples=1, num_folds=2)
    items = json.loads(datalist.read_text())["training"]
    assert [(item["image"], item["fold"]) for item in items] == [
        ("prompt_seed0_ct.nii.gz", 0),
        ("prompt_seed1_ct.nii.gz", 1),
        ("prompt_seed2_ct.nii.gz", 0),
    ]
    assert all((tmp_path / item["label"]).is_file() for item in items)
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "datalist.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(OutputExistsError, match="datalist of another dataset"):
        runner(foreign).synthesize(prompt=REPORT)
    assert sorted(p.name for p in foreign.iterdir()) == ["datalist.json"]


def test_a_finished_sample_missing_a_file_is_made_again_but_another_request_is_refused(runner, tmp_path):
    (paths,) = runner(tmp_path).generate(prompt=REPORT)
    paths["airway"].unlink()  # the same request, one file lost: made again
    runner(tmp_path).generate(prompt=REPORT)
    assert paths["airway"].is_file()
    paths["vessel"].unlink()
    with pytest.raises(OutputExistsError, match="guidance_scale differs"):  # another request: refused all the same
        runner(tmp_path, guidance_scale=2.0).generate(prompt=REPORT)
