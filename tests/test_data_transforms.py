"""The preprocessing pipeline: datalist item → 4-channel [-1, 1] tensor in the network layout and its low-res copy."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts import conventions as cv
from scripts.data.datalist import DataError
from scripts.data.io import ras_affine, write_json, write_nifti
from scripts.data.transforms import Downsampled, EncodeAnatomyd, build_preprocessing

N = 24  # tiny cube, voxels per side


def phantom_arrays(n: int = N) -> dict[str, np.ndarray]:
    """A body ellipsoid with two lungs (five lobes), a trachea and a few vessels; HU and label maps in RAS."""
    x, y, z = np.meshgrid(*(np.arange(n) - (n - 1) / 2,) * 3, indexing="ij")
    ct = np.full((n,) * 3, -1000.0)
    ct[(x / (0.45 * n)) ** 2 + (y / (0.35 * n)) ** 2 < 1] = 40.0
    right, left = (x - 0.2 * n) ** 2 + y**2 + z**2 < (0.17 * n) ** 2, (x + 0.2 * n) ** 2 + y**2 + z**2 < (0.17 * n) ** 2
    ct[right | left] = -850.0
    lobe = np.zeros((n,) * 3, np.uint8)
    lobe[left & (z >= 0)], lobe[left & (z < 0)] = 1, 2
    lobe[right & (z > 2)], lobe[right & (abs(z) <= 2)], lobe[right & (z < -2)] = 3, 4, 5
    airway = ((x**2 + y**2) < 2.5).astype(np.uint8)
    vessel = ((right | left) & (abs(y) < 1)).astype(np.uint8)
    ct[airway > 0], ct[vessel > 0] = -1000.0, 60.0
    ct[n // 2 - 2 : n // 2 + 1, n // 2 + 4 : n // 2 + 7, n // 2 - 2 : n // 2 + 1] = 3000.0  # metal: clips to 1
    return {"image": ct, "lobe": lobe, "airway": airway, "vessel": vessel}


def write_case(
    root: Path,
    name: str = "case0",
    spacing=(1.5, 1.5, 1.5),
    arrays: dict | None = None,
    flip_x: bool = False,
    report: str = "Findings: clear lungs. Impression: normal.",
) -> dict:
    """Write one case's NIfTI files under ``root/name`` and return its datalist item (absolute paths).

    ``flip_x`` stores the same anatomy in LAS order (x axis reversed, affine to match).
    """
    arrays = phantom_arrays() if arrays is None else arrays
    item: dict = {"id": name, "report": report}
    for key, array in arrays.items():
        affine = ras_affine(spacing, array.shape)
        if flip_x:
            array = array[::-1]
            affine = affine @ np.array([[-1, 0, 0, array.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        dtype = "int16" if key == "image" else "uint8"
        path = write_nifti(root / name / f"{key}.nii.gz", array, affine, dtype=dtype)
        item[key] = str(path)
    return item


def expected_ras(arrays: dict) -> np.ndarray:
    """The 4-channel encoding of the arrays, computed with the conventions directly."""
    return np.stack([cv.MEDSYN_MONAI.encode(name, arrays[key]) for name, key in zip(cv.CHANNELS, arrays)])


def to_network_layout(volume: np.ndarray) -> np.ndarray:
    """RAS (C, x, y, z) → IRP (C, D, H, W): depth runs head → feet, H towards right, W towards posterior."""
    return volume.transpose(0, 3, 1, 2)[:, ::-1, :, ::-1]


def test_pipeline_outputs_keys_shapes_ranges_and_lowres(tmp_path):
    item = write_case(tmp_path)
    out = build_preprocessing(spacing=(2.0, 2.0, 2.0), size=16)(item)
    image, lowres = out["image"], out["lowres"]
    assert image.shape == (4, 16, 16, 16) and image.dtype == torch.float32
    assert lowres.shape == (4, 4, 4, 4) and lowres.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image[0].max() == 1.0  # metal clipped
    lobe_codes = cv.encode_lobe(np.arange(6)).tolist()
    assert set(image[1].unique().tolist()) == set(lobe_codes)  # nearest resampling keeps exact label codes
    assert set(image[2].unique().tolist()) == {-1.0, 1.0} and set(image[3].unique().tolist()) == {-1.0, 1.0}
    assert out["channel_mask"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert out["report"] == "Findings: clear lungs. Impression: normal."
    # network layout, 2 mm voxels; lowres is the ×4 nearest stride of image with a ×4 spacing
    assert nib.aff2axcodes(image.affine.numpy()) == tuple(cv.MEDSYN_MONAI.axcodes)
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0), 2.0)
    np.testing.assert_array_equal(lowres.numpy(), image.numpy()[:, ::4, ::4, ::4])
    np.testing.assert_allclose(lowres.affine.numpy(), image.affine.numpy() @ np.diag([4.0, 4, 4, 1]))
    np.testing.assert_allclose(lowres.affine[:3, 3].numpy(), image.affine[:3, 3].numpy())


@pytest.mark.parametrize("flip_x", [False, True])
def test_encodings_exact_and_any_orientation_gives_ras_then_network_layout(tmp_path, flip_x):
    arrays = phantom_arrays()
    item = write_case(tmp_path, arrays=arrays, flip_x=flip_x)
    ras = build_preprocessing(spacing=None, size=N, lowres=False, network_layout=False)(dict(item))["image"]
    want = expected_ras(arrays)
    np.testing.assert_allclose(ras.numpy(), want, atol=1e-6)
    assert nib.aff2axcodes(ras.affine.numpy()) == ("R", "A", "S")
    net = build_preprocessing(spacing=None, size=N, lowres=False)(dict(item))["image"]
    np.testing.assert_allclose(net.numpy(), to_network_layout(want), atol=1e-6)
    # both affines put any voxel at the same world position: the network output can go back to RAS exactly
    ijk = np.array([3, 5, 7, 1.0])
    world_net = net.affine.numpy() @ np.array([N - 1 - ijk[2], ijk[0], N - 1 - ijk[1], 1.0])
    np.testing.assert_allclose(world_net, ras.affine.numpy() @ ijk, atol=1e-6)


def test_spacing_resampling_images_linear_masks_nearest(tmp_path):
    arrays = phantom_arrays()
    item = write_case(tmp_path, spacing=(1.0, 1.0, 3.0), arrays=arrays)
    out = build_preprocessing(spacing=(2.0, 2.0, 1.5), size=None, lowres=False, network_layout=False)(item)
    image = out["image"]
    assert image.shape == (4, 12, 12, 47)
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0), (2.0, 2.0, 1.5))
    assert len(np.unique(image[0].numpy())) > 6  # interpolated intensities appear in the CT ...
    assert set(image[1].unique().tolist()) <= set(cv.encode_lobe(np.arange(6)).tolist())  # ... never in labels


def test_resize_mode_and_padding_is_air(tmp_path):
    item = write_case(tmp_path)
    padded = build_preprocessing(spacing=None, size=32, lowres=False, network_layout=False)(dict(item))["image"]
    assert padded.shape == (4, 32, 32, 32)
    assert torch.all(padded[:, :4] == -1) and torch.all(padded[:, -4:] == -1)  # pad is air and background
    resized = build_preprocessing(spacing=None, size=12, size_mode="resize", lowres=False)(dict(item))["image"]
    assert resized.shape == (4, 12, 12, 12)
    assert set(resized[1].unique().tolist()) <= set(cv.encode_lobe(np.arange(6)).tolist())


def test_missing_masks_allowed_become_background_and_are_marked(tmp_path):
    item = write_case(tmp_path)
    del item["lobe"], item["vessel"]
    out = build_preprocessing(spacing=None, size=N, lowres=True, allow_missing_masks=True)(dict(item))
    assert out["channel_mask"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.all(out["image"][1] == -1) and torch.all(out["image"][3] == -1)
    assert out["image"][2].max() == 1  # the airway that is there is kept
    with pytest.raises(RuntimeError) as info:
        build_preprocessing(spacing=None, size=N)(dict(item))
    assert isinstance(info.value.__cause__, DataError)
    assert "case case0" in str(info.value.__cause__) and "'lobe'" in str(info.value.__cause__)


def test_encode_anatomy_without_mask_raises_by_itself():
    with pytest.raises(DataError, match="case c1: no 'airway' mask"):
        EncodeAnatomyd(["airway"])({"id": "c1", "image": torch.zeros(1, 2, 2, 2)})


def test_downsampled_plain_tensor_and_bad_factor():
    x = torch.arange(4 * 8**3, dtype=torch.float32).reshape(4, 8, 8, 8)
    out = Downsampled("x", factor=4, names="y")({"x": x})
    assert out["y"].shape == (4, 2, 2, 2) and out["y"][0, 1, 1, 1] == x[0, 4, 4, 4]
    assert out["x"] is x
    with pytest.raises(ValueError, match="positive integer"):
        Downsampled("x", factor=0)


def test_pipeline_wired_from_a_bundle_config(tmp_path):
    item = write_case(tmp_path)
    del item["vessel"]
    datalist = write_json(tmp_path / "datalist.json", {"training": [{**item, "image": "case0/image.nii.gz"}]})
    config = {
        "imports": ["$from scripts.data.datalist import load_datalist"],
        "dataset_dir": str(tmp_path),
        "train": {
            "datalist": (f"$load_datalist('{datalist}', @dataset_dir, 'training', allow_missing_masks=True)"),
            "preprocessing": {
                "_target_": "scripts.data.transforms.build_preprocessing",
                "spacing": [2.0, 2.0, 2.0],
                "size": 12,
                "allow_missing_masks": True,
            },
            "dataset": {"_target_": "Dataset", "data": "@train#datalist", "transform": "@train#preprocessing"},
        },
        "lowres_only": {
            "_target_": "Compose",
            "transforms": [
                "@train#preprocessing",
                {"_target_": "scripts.data.transforms.Downsampled", "keys": "lowres", "factor": 3, "names": "tiny"},
            ],
        },
    }
    parser = ConfigParser(config)
    sample = parser.get_parsed_content("train#dataset")[0]
    assert sample["image"].shape == (4, 12, 12, 12) and sample["lowres"].shape == (4, 3, 3, 3)
    assert sample["channel_mask"].tolist() == [1.0, 1.0, 1.0, 0.0]
    tiny = parser.get_parsed_content("lowres_only")(dict(parser.get_parsed_content("train#datalist")[0]))
    assert tiny["tiny"].shape == (4, 1, 1, 1)


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size_mode"):
        build_preprocessing(size_mode="stretch")
    with pytest.raises(ValueError, match="divisible"):
        build_preprocessing(size=30)
    with pytest.raises(ValueError, match="spacing"):
        build_preprocessing(spacing=(1.0, 0.0, 1.0))


def test_fixed_channels_land_on_the_training_grid(tmp_path):
    """Masks alone (anatomy control) or the CT alone (segmentation) are put on exactly the grid and encoding
    the training pipeline gives the same case, with the model grid's RAS affine."""
    from scripts.data.transforms import build_channel_preprocessing

    item = write_case(tmp_path, spacing=(1.5, 1.5, 1.5))
    grid = dict(spacing=(2.0, 2.0, 2.0), size=16)
    training = build_preprocessing(**grid, lowres=False, network_layout=False)(dict(item))
    masks_only = build_channel_preprocessing(["lobe", "vessel"], **grid)(
        {"lobe": item["lobe"], "vessel": item["vessel"]}
    )
    ct_only = build_channel_preprocessing(["image"], **grid)({"image": item["image"]})
    torch.testing.assert_close(masks_only["lobe"].as_tensor(), training["image"][1:2].as_tensor())
    torch.testing.assert_close(masks_only["vessel"].as_tensor(), training["image"][3:4].as_tensor())
    torch.testing.assert_close(ct_only["image"].as_tensor(), training["image"][0:1].as_tensor())
    np.testing.assert_allclose(ct_only["image"].affine.numpy(), training["image"].affine.numpy())
    with pytest.raises(ValueError, match="subset"):
        build_channel_preprocessing(["liver"])
    bad = dict(lobe=str(tmp_path / "nowhere.nii.gz"))
    with pytest.raises(RuntimeError) as info:
        build_channel_preprocessing(["lobe"], **grid)(bad)
    assert "nowhere.nii.gz" in str(info.value.__cause__)
