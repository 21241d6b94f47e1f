"""The segmentation entry of configs/inference.json, as MONAI Label's ``monaibundle`` app and ``monai.bundle`` use it.

Tiny random-weight networks on a 32³ model grid (10 mm voxels); ``models/model.pt`` is written with the bundle's own
command into a temporary folder, and the phantom CT lies on another grid (orientation, spacing, shape) than the model.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, create_workflow
from monai.data import MetaTensor
from monai.transforms import LoadImaged, SaveImaged
from monai.transforms import Spacingd as MonaiSpacingd

from scripts.conventions import NUM_SEGMENTATION_LABELS, SEGMENTATION_LABELS, combine_labels
from scripts.data.io import OutputExistsError, write_nifti
from scripts.data.transforms import Spacingd
from scripts.inference.segmentation import (
    JointSegmentationNetwork,
    SegmentationInferer,
    WeightsMismatchError,
    check_segment_run,
    main,
    segmentation_datalist,
)
from scripts.networks import WeightsNotFoundError, build_network, preset_config, save_network
from scripts.phantom import generate_case

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:parsing config_file")]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "inference.json")
SIZE = 32
GRID = {"spacing": [10.0, 10.0, 10.0], "size": SIZE, "size_mode": "pad_crop"}
CT_AFFINE = np.array([[9.0, 0, 0, -140], [0, -10.0, 0, 150], [0, 0, 12.0, -160], [0, 0, 0, 1]])  # RPS, anisotropic


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Tiny weights of both stages, model.pt written by the export command, and a phantom CT (32, 32, 28)."""
    root = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    lowres, sr = (
        save_network(root / f"{stage}.pt", build_network("tiny", stage), preset_config("tiny", stage), stage, data=GRID)
        for stage in ("lowres", "sr")
    )
    model = root / "model.pt"
    assert main(["--lowres_weights", str(lowres), "--sr_weights", str(sr), "--out", str(model)]) == 0
    hu = generate_case(SIZE, seed=0, findings="normal").ct_hu[:, ::-1, 2:30]
    ct = write_nifti(root / "ct.nii.gz", hu, CT_AFFINE, "int16")
    return SimpleNamespace(lowres=lowres, sr=sr, model=model, ct=ct)


def _settings(bundle, **extra):
    """Config overrides pointing the bundle's ids at the temporary files (fast: one or two DDIM steps)."""
    return {
        "lowres_weights": str(bundle.lowres),
        "sr_weights": str(bundle.sr),
        "segment_weights": str(bundle.model),
        "steps_lowres": 1,
        "steps_sr": 1,
        "sr_tile": None,
        "device": "cpu",
        **extra,
    }


def _causes(err):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def test_model_pt_holds_both_stages_and_is_never_silently_replaced(bundle, tmp_path):
    state = torch.load(bundle.model, weights_only=True)
    for stage, path in (("lowres", bundle.lowres), ("sr", bundle.sr)):
        own = torch.load(path, weights_only=True)
        assert {k for k in state if k.startswith(f"{stage}.")} == {f"{stage}.{k}" for k in own}
        torch.testing.assert_close(state[f"{stage}.{next(iter(own))}"], next(iter(own.values())))
    assert all(k.startswith(("lowres.", "sr.")) for k in state)
    args = ["--lowres_weights", str(bundle.lowres), "--sr_weights", str(bundle.sr), "--out", str(bundle.model)]
    with pytest.raises(SystemExit, match="already exists; pass --overwrite"):
        main(args)
    with pytest.raises(SystemExit, match="WeightsNotFoundError: no lowres weights.*monai.bundle run training"):
        main(["--lowres_weights", str(tmp_path / "none.pt"), "--sr_weights", str(bundle.sr), "--out", "x.pt"])
    assert main([*args, "--out", str(tmp_path / "again.pt"), "--overwrite"]) == 0


def test_monai_label_loads_model_pt_strictly_and_reads_the_labels(bundle, tmp_path):
    """What MONAI Label's BundleInferTask does: network_def from the config, model.pt with load_state_dict(strict)."""
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update(_settings(bundle))
    network = parser.get_parsed_content("network_def", instantiate=True)
    checkpoint = torch.load(bundle.model, map_location="cpu")
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
    assert network.size == (SIZE,) * 3

    channel_def = json.loads((ROOT / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]
    assert channel_def["pred"]["channel_def"] == {str(k): v for k, v in SEGMENTATION_LABELS.items()}
    assert channel_def["pred"]["num_channels"] == NUM_SEGMENTATION_LABELS

    with pytest.raises(WeightsNotFoundError, match="python -m scripts.inference.segmentation"):
        network.load_weights(tmp_path / "model.pt")
    partial = {k: v for k, v in checkpoint.items() if not k.startswith("sr.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="does not fit"):
        network.load_weights(tmp_path / "partial.pt")
    with pytest.raises(WeightsNotFoundError, match="no sr weights"):
        JointSegmentationNetwork.from_descriptions(bundle.lowres, tmp_path / "sr.pt")


def monai_label_item(config: dict, image: str, **request) -> dict:
    """The item MONAI Label 0.8.5 hands to the preprocessing, as its server logged it ("Infer Request (final)") for
    ``POST /infer/medsyn_monai?image=phantom`` with params ``{"steps_lowres": 2, "steps_sr": 1, "seed": 3}``
    (.ci/integration_monailabel.py): the task's options (``model_filename`` lists the ``models/*.pt`` files, shortest
    first, and ``displayable_configs``), the request, the model's description, and ``image_path`` beside ``image``
    (``BasicInferTask.__call__``)."""
    item = {
        "device": "cpu",
        "model_filename": ["model.pt", "sr_small.pt", "lowres_small.pt"],
        **config,
        "model": "medsyn_monai",
        "image": image,
        "description": "A MONAI reimplementation of MedSyn (Xu et al., IEEE TMI 2024).",
        **request,
    }
    return {**item, "image_path": image}


def monai_label_preprocessing(parser: ConfigParser) -> list:
    """``BundleInferTask.pre_transforms``: the top-level transforms of ``preprocessing``, LoadImaged returning the
    metadata dict too (MONAI Label sets ``image_only`` False and keeps ``image_meta_dict``)."""
    pre = list(parser.get_parsed_content("preprocessing").transforms)
    for transform in pre:
        if isinstance(transform, LoadImaged):
            transform._loader.image_only = False
    return pre


def test_monai_label_request_item_goes_through_the_segmentation(bundle):
    """MONAI Label's own item (``image_path`` and all): MONAI 1.6's Spacingd fails on the ``image_path`` string, the
    bundle's Spacingd resamples and keeps it."""
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update(_settings(bundle))
    options = parser.get_parsed_content("displayable_configs")
    data = monai_label_item(options, str(bundle.ct), steps_lowres=1, steps_sr=1, seed=3)
    pre = monai_label_preprocessing(parser)
    spacing = next(i for i, t in enumerate(pre) if isinstance(t, MonaiSpacingd))
    assert isinstance(pre[spacing], Spacingd)
    monai_spacing = MonaiSpacingd(pre[spacing].keys, pixdim=GRID["spacing"])
    loaded = data
    for transform in pre[:spacing]:
        loaded = transform(loaded)
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        monai_spacing(dict(loaded))
    for transform in pre:
        data = transform(data)
    assert data["image_path"] == str(bundle.ct) and data["model_filename"][0] == "model.pt"
    assert data["image_meta_dict"]["filename_or_obj"] == str(bundle.ct)
    assert data["image"].shape == (1, SIZE, SIZE, SIZE)

    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle.model, map_location="cpu"), strict=False)
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network.eval())[0]
    for transform in parser.get_parsed_content("postprocessing").transforms:
        if not isinstance(transform, SaveImaged):
            data = transform(data)
    assert data["pred"].shape == (1, 32, 32, 28) and data["pred"].dtype == torch.uint8
    np.testing.assert_allclose(data["pred"].affine.numpy(), CT_AFFINE, atol=1e-4)


def test_options_shown_in_monai_label_reach_the_sampler(bundle):
    """``displayable_configs`` holds the step counts and the seed; MONAI Label writes a request's values into it and
    parses again, then builds the inferer (its network is built once per server)."""
    parser = ConfigParser()
    parser.read_config(CONFIG)
    assert parser.get_parsed_content("displayable_configs") == {"steps_lowres": 50, "steps_sr": 20, "seed": 0}
    parser["displayable_configs"].update({"steps_lowres": 2, "steps_sr": "1", "seed": 7})  # BundleInferTask
    parser.parse()
    inferer = parser.get_parsed_content("inferer")
    assert (inferer.steps_lowres, inferer.steps_sr, inferer.seed) == (2, 1, 7)
    calls = []
    inferer(torch.zeros(1, 1, 4, 4, 4), lambda image, **settings: calls.append(settings) or image)
    assert calls == [{"steps_lowres": 2, "steps_sr": 1, "seed": 7}]
    with pytest.raises(ValueError, match="steps_sr"):
        SegmentationInferer(steps_sr=0)

    network = JointSegmentationNetwork.from_descriptions(bundle.lowres, bundle.sr, load=True, progress=False)
    ct = torch.rand(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        by_inferer = SegmentationInferer(1, 1, seed=5)(ct, network)
        network.steps_lowres, network.steps_sr, network.seed = 1, 1, 5
        by_network = network(ct)
    torch.testing.assert_close(by_inferer, by_network)


def test_weights_load_strictly_whatever_strict_the_caller_passes(bundle):
    """MONAI Label loads the model option's file with ``load_state_dict(strict=False)``."""
    network = JointSegmentationNetwork.from_descriptions(bundle.lowres, bundle.sr, progress=False)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    stage_one = torch.load(bundle.lowres, weights_only=True)
    with pytest.raises(WeightsMismatchError, match=r"weights given \(.*lowres.pt\) are stage-1 \(lowres\) weights"):
        network.load_state_dict(stage_one, strict=False)  # named: the file beside the others, as MONAI Label lists
    model = torch.load(bundle.model, weights_only=True)
    partial = {k: v for k, v in model.items() if not k.endswith(".bias")}
    with pytest.raises(WeightsMismatchError, match="do not fit the segmentation network: missing .*scripts.inference"):
        network.load_state_dict(partial, strict=False)
    for key, value in network.state_dict().items():  # nothing loaded
        torch.testing.assert_close(value, before[key])
    network.load_state_dict(model, strict=False)
    torch.testing.assert_close(network.state_dict()["sr." + next(iter(torch.load(bundle.sr, weights_only=True)))],
                               next(iter(torch.load(bundle.sr, weights_only=True).values())))  # fmt: skip


def test_torchscript_export_is_refused_with_the_reason(bundle):
    """``ckpt_export`` scripts ``network_def``; a diffusion sampler is no TorchScript graph (docs/monai_label.md)."""
    network = JointSegmentationNetwork.from_descriptions(bundle.lowres, bundle.sr, progress=False)
    with pytest.raises(TypeError, match="cannot be exported to TorchScript: its forward is a diffusion sampler"):
        torch.jit.script(network)


def test_monai_label_pipeline_returns_labels_on_the_input_grid(bundle):
    """BundleInferTask's order: preprocessing (LoadImaged found at the top level), inferer, postprocessing without
    SaveImaged (MONAI Label writes the label itself)."""
    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser.update(_settings(bundle))
    network = parser.get_parsed_content("network_def").load_weights(bundle.model).eval()
    pre = list(parser.get_parsed_content("preprocessing").transforms)
    assert any(isinstance(t, LoadImaged) for t in pre)
    data = {"image": str(bundle.ct)}
    for transform in pre:
        data = transform(data)
    assert data["image"].shape == (1, SIZE, SIZE, SIZE)
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    assert isinstance(data["pred"], MetaTensor) and data["pred"].shape == (NUM_SEGMENTATION_LABELS, SIZE, SIZE, SIZE)
    post = [t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)]
    for transform in post:
        data = transform(data)
    pred = data["pred"]
    assert pred.shape == (1, 32, 32, 28) and pred.dtype == torch.uint8
    np.testing.assert_allclose(pred.affine.numpy(), CT_AFFINE, atol=1e-4)


def test_infer_workflow_writes_a_label_map_in_the_input_space(bundle, tmp_path):
    overrides = _settings(bundle, image=str(bundle.ct), output_dir=str(tmp_path), steps_lowres=2, steps_sr=2)
    workflow = create_workflow(config_file=CONFIG, workflow_type="infer", logging_file=False, **overrides)
    assert workflow.check_properties() == []
    workflow.initialize()
    workflow.run()
    label = nib.load(str(tmp_path / "ct_seg.nii.gz"))
    ct = nib.load(str(bundle.ct))
    values = np.asarray(label.dataobj)
    assert label.get_data_dtype() == np.uint8 and set(np.unique(values)) <= set(SEGMENTATION_LABELS)
    assert label.shape == ct.shape
    np.testing.assert_allclose(label.affine, ct.affine, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_seg.nii.gz"]  # no temporary file left behind

    again = create_workflow(config_file=CONFIG, workflow_type="infer", logging_file=False, **overrides)
    with pytest.raises(Exception) as info:  # refused when the dataset is built, before any network runs
        again.run()
    assert any(isinstance(e, OutputExistsError) and "--overwrite true" in str(e) for e in _causes(info.value))


def test_infer_workflow_segments_a_dicom_series_on_its_own_grid(bundle, tmp_path):
    """--image takes a DICOM series folder; the label map comes back on the series' grid (as NIfTI)."""
    from scripts.data.dicom import read_series, write_ct_series

    ct = nib.load(str(bundle.ct))
    write_ct_series(tmp_path / "series", np.asarray(ct.dataobj), ct.affine, "SYNTHETIC-test", "test")
    nifti_run, dicom_run = tmp_path / "from_nifti", tmp_path / "from_dicom"
    for image, out in ((bundle.ct, nifti_run), (tmp_path / "series", dicom_run)):
        overrides = _settings(bundle, image=str(image), output_dir=str(out), steps_lowres=2, steps_sr=1)
        workflow = create_workflow(config_file=CONFIG, workflow_type="infer", logging_file=False, **overrides)
        workflow.initialize()
        workflow.run()
    label = nib.load(str(dicom_run / "series_seg.nii.gz"))
    _, affine, shape = read_series(tmp_path / "series")
    assert label.shape == shape and label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label.affine, affine, atol=1e-4)
    # the same labels as from the NIfTI CT, put on that CT's grid (the series runs its y axis the other way)
    from_nifti = np.asarray(nib.load(str(nifti_run / "ct_seg.nii.gz")).dataobj)
    flip = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(ct.affine)
    )
    np.testing.assert_array_equal(nib.orientations.apply_orientation(np.asarray(label.dataobj), flip), from_nifti)


def test_segment_command_fails_in_one_line_before_any_compute(bundle, tmp_path):
    """`python -m monai.bundle run segment ...` runs the config's `segment` id: checks first, then the evaluator."""
    (tmp_path / "ct_seg.nii.gz").write_bytes(b"")
    overrides = _settings(bundle, image=str(bundle.ct), output_dir=str(tmp_path))

    def segment(**extra):
        workflow = create_workflow(config_file=CONFIG, run_id="segment", logging_file=False, **{**overrides, **extra})
        workflow.run()

    with pytest.raises(SystemExit, match="^medsyn segment failed: OutputExistsError: .*ct_seg.nii.gz already exist"):
        segment()
    with pytest.raises(SystemExit, match="WeightsNotFoundError: no segmentation weights .*scripts.inference.segm"):
        segment(segment_weights=str(tmp_path / "none.pt"), overwrite=True)
    with pytest.raises(SystemExit, match="ValueError: nothing to segment"):
        segment(image=None)
    bad = write_nifti(tmp_path / "bad.nii.gz", np.full((8, 8, 8), np.nan), np.eye(4), "float32")
    with pytest.raises(SystemExit, match="^medsyn segment failed: DataError: .*bad.nii.gz"):
        segment(image=str(bad))  # found while the evaluator loads it: the root cause, not MONAI's wrapper
    stale = tmp_path / ".ct_seg.nii.gz.k9x.tmp.nii.gz"  # left by a run killed while writing
    stale.write_bytes(b"half a label map")
    check_segment_run(bundle.ct, None, tmp_path, "seg", True, bundle.lowres, bundle.sr, bundle.model)
    assert not stale.exists()


def test_same_seed_same_labels_whatever_the_batch(bundle):
    network = JointSegmentationNetwork.from_descriptions(
        bundle.lowres, bundle.sr, load=True, steps_lowres=1, steps_sr=1, progress=False
    )
    ct = torch.rand(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        one = network(ct)
        two = network(torch.cat([ct, ct]))
    assert one.shape == (1, NUM_SEGMENTATION_LABELS, SIZE, SIZE, SIZE) and one.dtype == torch.float32
    torch.testing.assert_close(one.sum(dim=1), torch.ones(1, SIZE, SIZE, SIZE))  # one-hot
    torch.testing.assert_close(two, torch.cat([one, one]))
    with pytest.raises(ValueError, match="model grid"):
        network(ct[..., :16])


def test_combined_label_paints_airway_then_vessel_over_lobes():
    lobe = np.array([0, 1, 3, 5, 2], dtype=np.uint8)
    airway = np.array([1, 1, 0, 0, 1], dtype=np.uint8)
    vessel = np.array([0, 0, 1, 0, 1], dtype=np.uint8)
    assert combine_labels(lobe, airway, vessel).tolist() == [6, 6, 7, 5, 7]
    as_torch = combine_labels(*(torch.from_numpy(a) for a in (lobe, airway, vessel)))
    assert as_torch.dtype == torch.uint8 and as_torch.tolist() == [6, 6, 7, 5, 7]
    assert lobe.tolist() == [0, 1, 3, 5, 2]  # inputs untouched


def test_segmentation_inputs_are_checked_before_any_compute(bundle, tmp_path):
    folder = tmp_path / "cts"
    for name in ("b.nii.gz", "a.nii"):
        write_nifti(folder / name, np.zeros((4, 4, 4)), np.eye(4), "int16")
    (folder / "notes.txt").write_text("not a CT")
    items = segmentation_datalist(image=bundle.ct, dataset_dir=folder)
    assert [Path(i["image"]).name for i in items] == ["ct.nii.gz", "a.nii", "b.nii.gz"]
    with pytest.raises(ValueError, match="--image CT.nii.gz or --dataset_dir"):
        segmentation_datalist()
    with pytest.raises(FileNotFoundError, match="no such file"):
        segmentation_datalist(image=tmp_path / "none.nii.gz")
    (tmp_path / "a_seg.nii.gz").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="a_seg.nii.gz"):
        segmentation_datalist(dataset_dir=folder, output_dir=tmp_path)
    assert len(segmentation_datalist(dataset_dir=folder, output_dir=tmp_path, overwrite="true")) == 2
