"""Phantom geometry: the scalar and array lobe functions agree, the fast drawing primitives equal the plain ones,
every size draws the same body, reports vary."""

import numpy as np
import pytest

from scripts.phantom import generate_case
from scripts.phantom.anatomy import Anatomy
from scripts.phantom.geometry import FOV_MM, Grid, smooth_noise, tubes_voxels
from tests.test_phantom import negates


def test_scalar_and_vector_lobe_functions_agree():
    rng = np.random.default_rng(0)
    for _ in range(3):
        anat = Anatomy.sample(rng, ctr=float(rng.uniform(0.4, 0.75)))
        points = rng.uniform(-160, 160, size=(4000, 3))
        vector = anat.lobe_of(points[:, 0], points[:, 1], points[:, 2])
        scalar = np.array([anat.lobe_at(p) for p in points])
        np.testing.assert_array_equal(vector, scalar)
        assert set(np.unique(vector)) == {0, 1, 2, 3, 4, 5}


def test_tubes_cover_the_voxels_within_their_radius():
    grid = Grid(64)
    rng = np.random.default_rng(3)
    p0 = rng.uniform(-170, 170, size=(200, 3))  # some boxes reach past the grid's edge
    p1 = p0 + rng.normal(0, 20, size=(200, 3))
    p1[:5] = p0[:5]  # zero-length tubes are spheres
    radii = rng.uniform(0.1, 12.0, size=(200, 2))
    segments = np.concatenate([p0, p1, radii], axis=1)
    min_radius, grow = 4.0, 1.5
    # every voxel's distance to every tube, in float64 over the whole grid
    x, y, z = np.meshgrid(*[grid.axis().astype(np.float64)] * 3, indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    sure, possible = set(), set()
    for k, (a, b, (r0, r1)) in enumerate(zip(p0, p1, radii)):
        d = b - a
        t = np.clip((points - a) @ d / max(float(d @ d), 1e-12), 0.0, 1.0)
        dist = np.linalg.norm(points - a - t[:, None] * d, axis=1)
        radius = np.maximum(r0 + (r1 - r0) * t, min_radius) + grow
        sure |= {(k, int(i)) for i in np.flatnonzero(dist <= radius - 1e-3)}
        possible |= {(k, int(i)) for i in np.flatnonzero(dist <= radius + 1e-3)}
    # a small chunk makes the batches split the tubes several times
    got = [
        (int(s), int(i))
        for seg, idx in tubes_voxels(grid, segments, min_radius, grow, chunk_voxels=5000)
        for s, i in zip(seg, idx)
    ]
    assert len(sure) > 1000 and len(got) == len(set(got))
    assert sure <= set(got) <= possible


def test_lung_bounds_hold_the_whole_lung():
    grid = Grid(64)
    x, y, z = grid.coords()
    rng = np.random.default_rng(5)
    for _ in range(6):
        anat = Anatomy.sample(rng, ctr=float(rng.uniform(0.4, 0.75)))
        box = grid.index_box(*anat.lung_bounds())
        lung = anat.lung_region(x, y, z)
        outside = lung.copy()
        outside[box] = False
        assert lung.any() and not outside.any()


def test_smooth_noise_is_normalised_smooth_and_reproducible():
    a = smooth_noise((40, 50, 60), 2.0, 10.0, np.random.default_rng(1))
    b = smooth_noise((40, 50, 60), 2.0, 10.0, np.random.default_rng(1))
    assert a.shape == (40, 50, 60) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert abs(float(a.mean())) < 1e-4 and float(a.std()) == pytest.approx(1.0, abs=1e-3)
    # neighbours 2 mm apart are nearly equal, points a cell (10 mm) apart are not
    assert np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1] > 0.9
    assert np.corrcoef(a[:-5].ravel(), a[5:].ravel())[0, 1] < 0.6


def test_grid_matches_ras_affine_and_fixed_fov():
    case = generate_case(32, 1, "normal")
    grid = Grid(32)
    assert case.spacing == grid.spacing == FOV_MM / 32
    # voxel centres in the affine are the coordinates the anatomy was drawn at
    np.testing.assert_allclose(case.affine[:3, :3], np.eye(3) * grid.spacing)
    np.testing.assert_allclose(case.affine[:3, 3], [grid.origin] * 3)


def test_every_size_draws_the_same_subject():
    small, large = generate_case(32, 4, "normal"), generate_case(64, 4, "normal")
    assert small.truth["anatomy"] == large.truth["anatomy"]
    for key in ("left", "right"):
        assert small.truth["lung_volume_ml"][key] == pytest.approx(large.truth["lung_volume_ml"][key], rel=0.1)
    assert small.truth["cardiothoracic_ratio"] == pytest.approx(large.truth["cardiothoracic_ratio"], abs=0.06)


def test_subjects_vary_and_reports_vary_in_wording():
    cases = [generate_case(32, s, "normal") for s in range(4)]
    assert len({c.truth["lung_volume_ml"]["total"] for c in cases}) == 4
    assert len({c.report for c in cases}) > 1
    for c in cases:
        assert negates(c.report, "effusion", "pleural")
