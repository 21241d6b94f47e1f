"""A deterministic chest-like CT and lobe map on the official MedSyn atlas grid, for the preprocessing fixture.

Shared by the fixture maker (which runs the official preprocessing on it) and tests/test_official.py (which runs
the bundle's ``atlas`` preprocessing on it): both build it from this file, so the fixture stores only the official
outputs. NumPy only; every value is a closed-form function of the voxel position plus a seeded PCG64 texture.
"""

from __future__ import annotations

import numpy as np

# the atlas grid (preprocess/Patient_0111262324_..._Reg_mask.nii.gz of batmanlab/MedSyn): 1 mm, voxel axes L, A, S
SHAPE = (316, 316, 292)
AFFINE = np.array(
    [
        [-1.0, 0.0, 0.0, 135.5],
        [0.0, 1.0, 0.0, -162.883056640625],
        [0.0, 0.0, 1.0, -321.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
CENTRE = (-21.0, -10.0, -180.0)  # world mm, inside the atlas lungs' bounding box


def atlas_ct() -> tuple[np.ndarray, np.ndarray]:
    """(CT int16 HU, lobe labels uint8 0..5), both (316, 316, 292) indexed like the atlas file (i, j, k)."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in SHAPE)
    x = (AFFINE[0, 3] - i)[:, None, None] - CENTRE[0]  # towards the patient's right is +x (RAS)
    y = (AFFINE[1, 3] + j)[None, :, None] - CENTRE[1]  # anterior is +y
    z = (AFFINE[2, 3] + k)[None, None, :] - CENTRE[2]  # superior is +z
    body = (x / 150.0) ** 2 + (y / 110.0) ** 2 < 1.0
    right = ((x - 70.0) / 55.0) ** 2 + (y / 80.0) ** 2 + (z / 110.0) ** 2 < 1.0
    left = ((x + 70.0) / 55.0) ** 2 + (y / 80.0) ** 2 + (z / 110.0) ** 2 < 1.0
    spine = ((x / 15.0) ** 2 + ((y + 85.0) / 15.0) ** 2 < 1.0) & (np.abs(z) < 140.0)
    texture = 30.0 * np.sin(x / 7.0) * np.cos(y / 11.0) * np.sin(z / 5.0)  # detail the anti-aliasing filter acts on
    ct = np.where(body, 40.0, -1000.0) + texture * body
    ct = np.where(right | left, -850.0 + texture, ct)
    ct = np.where(spine, 900.0, ct)  # above the 600 HU window: the official resize happens before clipping
    noise = np.random.default_rng(0).normal(0.0, 20.0, size=SHAPE).astype(np.float32)
    ct = np.rint(ct + noise).astype(np.int16)

    lobe = np.zeros(SHAPE, np.uint8)
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    upper = np.broadcast_to(z > 10.0, shape)
    anterior = np.broadcast_to(y > 15.0, shape)
    lobe[left & upper] = 1
    lobe[left & ~upper] = 2
    lobe[right & upper] = 3
    lobe[right & ~upper & anterior] = 4
    lobe[right & ~upper & ~anterior] = 5
    return ct, lobe
