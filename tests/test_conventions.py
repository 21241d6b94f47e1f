"""The shared data conventions (SPEC.md §3): exact values at the window edges and lossless round trips."""

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


@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_binary_encoding_round_trip(kind):
    mask = kind(np.array([0, 1, 0, 3], dtype=np.uint8))
    encoded = cv.encode_binary(mask)
    assert np.asarray(encoded).tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert np.asarray(cv.decode_binary(encoded)).tolist() == [0, 1, 0, 1]


def test_decode_volume_splits_named_channels():
    x = np.stack([np.zeros((2, 2, 2))] * 4).astype(np.float32)
    out = cv.decode_volume(x)
    assert list(out) == list(cv.CHANNELS)
    assert out["lobe"].dtype == np.uint8 and out["ct"].dtype == np.float32
    with pytest.raises(ValueError, match="expected 4 channels"):
        cv.decode_volume(x[:3])
    with pytest.raises(ValueError, match="unknown channel"):
        cv.encode_channel("liver", x[0])


@pytest.mark.parametrize("kind", [np.asarray, torch.as_tensor])
def test_network_layout_matches_monai_orientation_and_round_trips(kind):
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    ras = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (C, X, Y, Z)
    monai_irp = Orientation(axcodes=cv.NETWORK_AXCODES)(MetaTensor(torch.as_tensor(ras), affine=torch.eye(4)))
    ours = cv.ras_to_network(kind(ras))
    np.testing.assert_array_equal(np.asarray(ours), monai_irp.numpy())
    assert tuple(ours.shape) == (2, 5, 3, 4)
    np.testing.assert_array_equal(np.asarray(cv.network_to_ras(ours)), ras)
