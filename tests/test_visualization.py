"""The shared montage: orientation of the slices, overlays, and atomic PNG writing."""

import numpy as np
import pytest
from PIL import Image

from scripts.visualization import _slices, default_index, montage_array, save_montage


def test_axial_slice_shows_patient_right_on_image_left_and_anterior_up():
    volume = np.zeros((8, 6, 4))
    volume[7, 0, 2] = 1  # patient's far right (+x), posterior (-y)
    axial = _slices(volume, (4, 3, 2))[0]
    row, col = np.argwhere(axial == 1)[0]
    assert col == 0  # right side of the patient on the image left (radiological convention)
    assert row == axial.shape[0] - 1  # posterior at the bottom


def test_png_has_overlays_and_is_written_once(tmp_path):
    ct = np.full((16, 16, 16), -1000.0)
    ct[4:12, 4:12, 4:12] = -850
    lobe = np.zeros(ct.shape, dtype=np.uint8)
    lobe[4:12, 4:12, 4:12] = 3
    plain = montage_array(ct)
    with_masks = montage_array(ct, masks={"lobe": lobe, "airway": lobe > 0}, spacing=(1, 1, 2), title="x" * 200)
    assert with_masks.shape[0] > plain.shape[0] and with_masks.shape[2] == 3
    path = tmp_path / "case.png"
    save_montage(path, ct, masks={"vessel": lobe > 0})
    assert Image.open(path).format == "PNG"
    with pytest.raises(FileExistsError):
        save_montage(path, ct)
    with pytest.raises(ValueError, match="shape"):
        montage_array(ct, masks={"lobe": lobe[:8]})


def test_default_sagittal_slice_goes_through_the_right_lung():
    lobe = np.zeros((20, 10, 12), dtype=np.uint8)
    lobe[2:6] = 1  # left lung (−x)
    lobe[12:15, :, 6:] = 3  # right upper lobe, x 12-14
    lobe[14:17, :, :6] = 5  # right lower lobe, x 14-16
    assert default_index(lobe.shape, lobe) == (14, 5, 6)
    assert default_index(lobe.shape) == (10, 5, 6)  # no lobe map: the centre
    assert default_index(lobe.shape, np.where(lobe >= 3, 0, lobe)) == (10, 5, 6)  # no right lung: the centre
