"""Classical anatomy masks on a small analytic chest: lungs by side, airway, vessels, lobe layout, effusion."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.anatomy import classical


def toy_chest(n: int = 80, spacing=(2.5, 2.5, 3.0), seed: int = 0, effusion: bool = False, consolidation: bool = False):
    """An elliptic body with two lungs, a trachea splitting into two main bronchi and six vessels (RAS, x y z).

    Returns (ct_hu, spacing, lungs 0/1/2, airway, vessel, fluid); ``fluid`` marks pleural effusion when asked.
    """
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, dtype=float)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for s in sp], indexing="ij")
    ct = np.full((n, n, n), -1000.0, dtype=np.float32)
    body = (x / 88) ** 2 + (y / 68) ** 2 < 1
    ct[body] = 40
    lungs = np.zeros(ct.shape, np.uint8)
    for label, cx in ((1, -42.0), (2, 42.0)):  # label 1 (left lung) on the −x side
        lungs[(((x - cx) / 32) ** 2 + ((y + 3) / 44) ** 2 + ((z + 10) / 80) ** 2 < 1) & body] = label
    ct[lungs > 0] = -855
    airway = (x**2 + (y - 6) ** 2 < 7.5**2) & (z > 40)
    for side in (-1, 1):  # main bronchi from the carina (0, 6, 40) to (±42, 0, 0)
        t = np.clip((x * side * 42 - (z - 40) * 40) / (42**2 + 40**2), 0, 1)
        airway |= (x - side * 42 * t) ** 2 + (y - 6 + 6 * t) ** 2 + (z - 40 + 40 * t) ** 2 < 5.0**2
    airway &= body & (z < 110)
    ct[airway] = -1000
    vessel = np.zeros(ct.shape, bool)
    for cx in (-42, 42):
        for dy in (-22, 0, 22):
            vessel |= ((x - cx - 10) ** 2 + (y - dy) ** 2 < 3.2**2) & (np.abs(z + 10) < 60)
    vessel &= lungs > 0
    ct[vessel] = 40
    fluid = np.zeros(ct.shape, bool)
    if effusion:  # dependent (posterior) fluid in the right lung's cavity
        fluid = (lungs == 2) & (y < -25)
        ct[fluid] = 15
        lungs[fluid] = 0
        vessel &= ~fluid
    if consolidation:  # a dense patch surrounded by aerated left lung
        patch = ((x + 50) ** 2 + (y - 12) ** 2 + (z - 5) ** 2 < 9.0**2) & (lungs == 1)
        ct[patch] = 32
        vessel &= ~patch
    ct += rng.normal(0, 12, ct.shape).astype(np.float32)
    return ct, sp, lungs, airway, vessel, fluid


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def chest():
    return toy_chest()


def test_lungs_are_found_and_named_by_side(chest):
    ct, sp, lungs, airway, _, _ = chest
    found = classical.segment_lungs(ct, sp)
    assert found.dtype == np.uint8 and set(np.unique(found)) == {0, 1, 2}
    assert dice(found == 1, lungs == 1) > 0.95 and dice(found == 2, lungs == 2) > 0.95
    assert (found[airway] > 0).mean() < 0.1  # the airway lumen is its own mask
    # mirroring the patient left-right swaps the names: the left lung is always on the −x side
    mirrored = classical.segment_lungs(ct[::-1], sp)[::-1]
    assert dice(mirrored == 1, lungs == 2) > 0.95 and dice(mirrored == 2, lungs == 1) > 0.95


def test_body_holds_the_lungs(chest):
    ct, sp, lungs, *_ = chest
    body = classical.segment_body(ct, sp)
    assert body.dtype == bool and body[lungs > 0].all()
    assert not body[0, 0, :].any()  # outside air in the corner


def test_airway_region_growing(chest):
    ct, sp, _, airway, _, _ = chest
    found = classical.segment_airway(ct, sp)
    assert found.dtype == np.uint8
    assert dice(found, airway) > 0.85


def test_vessels_by_vesselness_inside_the_lungs(chest):
    ct, sp, lungs, _, vessel, _ = chest
    found = classical.segment_vessels(ct, sp, lungs)
    assert dice(found, vessel) > 0.8
    assert not found[lungs == 0].any()


def test_vessels_are_found_when_no_airway_is(chest):
    # a generated CT may show no airway at all: the vessels must not depend on it (an empty airway once turned
    # the candidate mask into integers, and the result into the labels of the box's first two x-slices)
    ct, sp, lungs, airway, vessel, _ = chest
    no_airway = np.zeros(ct.shape, np.uint8)
    found = classical.segment_vessels(ct, sp, lungs, no_airway)
    assert found.dtype == np.uint8 and dice(found, vessel) > 0.8
    # an airway's wall only takes candidates away: what is found with it is found without it
    with_airway = classical.segment_vessels(ct, sp, lungs, airway) > 0
    assert with_airway.any() and not (with_airway & (found == 0)).any()


def test_lobes_follow_the_ltrc_layout(chest):
    ct, sp, lungs, *_ = chest
    lobes = classical.approximate_lobes(ct, sp, lungs)
    assert set(np.unique(lobes)) == {0, 1, 2, 3, 4, 5}
    assert set(np.unique(lobes[lungs == 1])) == {1, 2} and set(np.unique(lobes[lungs == 2])) == {3, 4, 5}
    assert not lobes[lungs == 0].any()
    z = np.arange(ct.shape[2])[None, None, :]
    y = np.arange(ct.shape[1])[None, :, None]

    def mean(coord, label):
        return float(np.broadcast_to(coord, ct.shape)[lobes == label].mean())

    assert mean(z, 1) > mean(z, 2) and mean(z, 3) > mean(z, 5)  # upper lobes above lower lobes
    assert mean(y, 4) > mean(y, 5) and mean(y, 2) < mean(y, 1)  # middle lobe anterior, lower lobes posterior


def test_effusion_is_left_out_and_enclosed_consolidation_kept():
    ct, sp, lungs, _, _, fluid = toy_chest(effusion=True, consolidation=True, seed=3)
    found = classical.segment_lungs(ct, sp)
    assert (found[fluid] > 0).mean() < 0.1
    assert dice(found == 1, lungs == 1) > 0.95  # the consolidated patch counts as lung
    assert dice(found == 2, lungs == 2) > 0.9


def test_lungs_joined_across_the_midline_are_split_on_every_slice():
    """Two lungs joined in front by a band of air whose thinnest column alternates between two x positions from one
    slice to the next (as on a generated volume): cuts at different x on adjacent slices must not leave a
    staircase through which the halves stay one component (both lungs were then named the right lung)."""
    ct, sp, lungs, *_ = toy_chest()
    n = ct.shape[0]
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for s in sp], indexing="ij")
    band = (np.abs(x) < 14) & (y > 20) & (y < 26) & (np.abs(z + 10) < 50)
    thin = (np.abs(x - np.where(np.arange(n) % 2 == 0, -6.25, 6.25)[None, None, :]) < 1.3) & (y > 23)
    ct[band & ~thin] = -855
    found = classical.segment_lungs(ct, sp)
    assert dice(found == 1, lungs == 1) > 0.9 and dice(found == 2, lungs == 2) > 0.9


def test_symmetric_eigenvalues_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3, 3))
    a = a + a.transpose(0, 2, 1)
    a[:5] = np.eye(3) * 2.0  # repeated eigenvalues
    entries = [a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2]]
    ours = np.sort(classical._symmetric_eigenvalues(entries), axis=1)
    np.testing.assert_allclose(ours, np.linalg.eigvalsh(a), atol=1e-8)


def test_vesselness_prefers_tubes_to_blob_centres_and_plates():
    sp = np.array([1.0, 1.0, 1.0])
    x, y, z = np.meshgrid(*[np.arange(48) - 23.5] * 3, indexing="ij")
    ct = np.full((48, 48, 48), -850.0, dtype=np.float32)
    tube = (x + 10) ** 2 + (y + 10) ** 2 < 2.5**2
    blob = (x - 10) ** 2 + (y - 10) ** 2 + (z - 10) ** 2 < 4.0**2
    plate = np.abs(x - 10) < 1.0
    plate &= (y < -5) & (z < -5)
    ct[tube | blob | plate] = 40
    v = classical.vesselness(ct, sp, np.ones(ct.shape, bool))
    plate_inside = plate & (y < -9) & (z < -9)  # a plate's rim looks like a tube; its inside must not
    assert v[tube].max() > 0.3
    assert v[tube].max() > 3 * v[plate_inside].max()
    centre = v[33:35, 33:35, 33:35]  # the blob's centre voxels: a blob is not a tube (its rim can respond)
    assert centre.max() < 0.2 and v[tube].min() > centre.max()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="3D"):
        classical.segment_lungs(np.zeros((10, 10)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        classical.segment_body(np.zeros((10, 10, 10)), (1, 0, 1))
    empty = np.full((16, 16, 16), -1000.0)
    assert not classical.segment_lungs(empty, (1, 1, 1)).any()
    assert not classical.segment_airway(empty, (1, 1, 1)).any()
