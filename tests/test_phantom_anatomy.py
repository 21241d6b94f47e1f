"""Phantom geometry: the scalar and array lobe functions agree, every size draws the same body, reports vary."""

import numpy as np
import pytest

from scripts.phantom import generate_case
from scripts.phantom.anatomy import Anatomy
from scripts.phantom.geometry import FOV_MM, Grid
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
