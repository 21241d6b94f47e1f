"""The shared data conventions (docs/README.md, data conventions): exact values at the window edges and lossless round trips."""

import numpy as np
import pytest
import torch

from scripts import conventions as cv


@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_hu_window_maps_edges_and_clips(kind):
    hu = kind(np.array([-3000.0, -1024.0, -212.0, 600.0, 3000.0], dtype=np.float32))
    unit = cv.hu_to_unit(hu)
    np.testing.assert_allclose(np.asarray(unit), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(cv.unit_to_hu(unit)), [-1024, -1024, -212, 600, 600], atol=1e-3)


def test_ct_to_int16_rounds_and_clips():
    out = cv.ct_to_int16_hu(np.array([-1.5, 0.0, 1.0, 2.0], dtype=np.float32))
    assert out.dtype == np.int16
    assert out.tolist() == [-1024, -212, 600, 600]


@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_lobe_encoding_round_trip(kind):
    labels = kind(np.arange(6, dtype=np.uint8))
    encoded = cv.encode_lobe(labels)
    np.testing.assert_allclose(np.asarray(encoded), [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0], atol=1e-6)
    noisy = encoded + 0.09  # less than half a label step (0.2) is decoded to the same label
    assert np.asarray(cv.decode_lobe(noisy)).tolist() == list(range(6))
    assert cv.decode_lobe(kind(np.array([-5.0, 5.0]))).tolist() == [0, 5]


@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_lung_sides_name_lobes_1_2_left_and_3_5_right(kind):
    sides = cv.lung_sides(kind(np.arange(6, dtype=np.uint8)))
    assert np.asarray(sides).tolist() == [0, cv.LEFT_LUNG, cv.LEFT_LUNG, cv.RIGHT_LUNG, cv.RIGHT_LUNG, cv.RIGHT_LUNG]
    assert np.asarray(sides).dtype == np.uint8


BOTH = pytest.mark.parametrize("conventions", [cv.MEDSYN_MONAI, cv.MEDSYN_OFFICIAL], ids=lambda c: c.name)


@BOTH
@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_binary_encoding_round_trip(kind, conventions):
    mask = kind(np.array([0, 1, 0, 3], dtype=np.uint8))
    encoded = conventions.encode("airway", mask)
    absent, present = conventions.binary_values
    assert np.asarray(encoded).tolist() == [absent, present, absent, present]
    assert np.asarray(conventions.decode("vessel", encoded)).tolist() == [0, 1, 0, 1]
    # the threshold is the midpoint: a prediction just on the present side of it is a vessel
    middle = conventions.binary_threshold
    assert np.asarray(conventions.decode("airway", kind(np.array([middle - 0.01, middle + 0.01])))).tolist() == [0, 1]


def test_presets_state_the_official_encoding_and_layout():
    assert cv.MEDSYN_MONAI.binary_values == (-1.0, 1.0) and cv.MEDSYN_MONAI.axcodes == "IRP"
    assert cv.MEDSYN_OFFICIAL.binary_values == (0.0, 1.0) and cv.MEDSYN_OFFICIAL.axcodes == "SAL"
    assert cv.MEDSYN_OFFICIAL.extra_final_evaluation and not cv.MEDSYN_MONAI.extra_final_evaluation
    # lobes and CT are encoded alike
    labels = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(cv.MEDSYN_OFFICIAL.encode("lobe", labels), cv.MEDSYN_MONAI.encode("lobe", labels))


@BOTH
def test_description_form_round_trips_and_old_descriptions_are_this_bundles(conventions):
    assert cv.get_conventions(conventions.as_dict()) == conventions
    assert cv.get_conventions(conventions.name) is conventions
    assert cv.conventions_from_description({"stage": "lowres"}) is cv.MEDSYN_MONAI
    with pytest.raises(ValueError, match="valid presets"):
        cv.get_conventions("medsyn-unknown")
    with pytest.raises(ValueError, match="axcodes"):
        cv.ModelConventions("bad", "IIP", (0.0, 1.0), False)
    with pytest.raises(ValueError, match="binary_values"):
        cv.ModelConventions("bad", "IRP", (1.0, 1.0), False)


@BOTH
def test_decode_ras_splits_named_channels(conventions):
    x = np.stack([np.zeros((2, 3, 4))] * 4).astype(np.float32)
    out = conventions.decode_ras(x)
    assert list(out) == list(cv.CHANNELS)
    assert out["lobe"].dtype == np.uint8 and out["ct"].dtype == np.int16
    assert out["ct"].shape == tuple(conventions.to_ras(x[0]).shape)  # in RAS order
    with pytest.raises(ValueError, match="expected 4 channels"):
        conventions.decode_ras(x[:3])
    with pytest.raises(ValueError, match="unknown channel"):
        conventions.encode("liver", x[0])


@BOTH
@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_network_layout_matches_monai_orientation_and_round_trips(kind, conventions):
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    ras = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (C, X, Y, Z)
    oriented = Orientation(axcodes=conventions.axcodes, labels=None)(
        MetaTensor(torch.as_tensor(ras), affine=torch.eye(4))
    )
    ours = conventions.to_network(kind(ras))
    np.testing.assert_array_equal(np.asarray(ours), oriented.numpy())
    np.testing.assert_array_equal(np.asarray(conventions.to_ras(ours)), ras)
    # the RAS affine of a grid given in network layout: MONAI's affine of the oriented image maps back to identity
    np.testing.assert_allclose(conventions.ras_affine(oriented.affine.numpy(), oriented.shape[1:]), np.eye(4))


def test_official_layout_is_the_array_of_a_volume_on_the_las_atlas():
    """sitk.GetArrayFromImage of an image on the LAS atlas grid indexes (k, j, i): S, A, L, the official layout."""
    las = np.arange(3 * 4 * 5).reshape(3, 4, 5)  # (i, j, k) of a file whose axes run L, A, S
    sitk_array = las.transpose(2, 1, 0)  # what GetArrayFromImage returns
    ras = las[::-1]  # the same volume in RAS order
    np.testing.assert_array_equal(cv.MEDSYN_OFFICIAL.to_network(ras), sitk_array)


def test_atlas_grid_affine_covers_the_atlas_field_of_view():
    import nibabel as nib

    affine = cv.atlas_grid_affine(256)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [316 / 256, 316 / 256, 292 / 256])
    # the outer voxel edges of the resized grid are those of the atlas (a resize that keeps the edges)
    atlas = cv.ATLAS_AFFINE
    atlas_corners = [atlas @ [i, j, k, 1] for i, j, k in ((-0.5, -0.5, -0.5), (315.5, 315.5, 291.5))]
    ours = [affine @ [i, j, k, 1] for i, j, k in ((-0.5, -0.5, -0.5), (255.5, 255.5, 255.5))]
    np.testing.assert_allclose(np.sort(np.stack(atlas_corners)[:, :3], 0), np.sort(np.stack(ours)[:, :3], 0), atol=1e-9)
