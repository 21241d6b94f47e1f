"""The space-filling tree (scripts/phantom/space_filling.py): it fills its region, divides by generations, thins by
the flow rule, stays inside, and is the same every time."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.phantom.space_filling import DIAMETER_EXPONENT, grow_tree


@pytest.fixture(scope="module")
def ball():
    ax = np.arange(-40.0, 41.0, 4.0)
    points = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return points[np.linalg.norm(points, axis=1) <= 40.0]


def test_terminals_share_the_region_and_generations_double(ball):
    tree = grow_tree(ball, np.array([0.0, 0.0, 60.0]), 4.0, 3, min_radius=0.8)
    terminals = [b for b in tree if b.region is not None]
    assert sum(b.supplied for b in terminals) == len(ball)  # every point supplied once
    assert np.unique(np.concatenate([b.region for b in terminals]), axis=0).shape[0] == len(ball)
    counts = np.bincount([b.generation for b in tree])
    assert counts[3] == 1 and counts[4] == 2 and counts[5] == 4 and counts[6] == 8  # halves at every division
    assert max(b.generation for b in tree) >= 9


def test_daughters_start_at_the_parent_end_and_thin_by_the_flow_rule(ball):
    tree = grow_tree(ball, np.array([0.0, 0.0, 60.0]), 4.0, 3)
    for b in tree[1:]:
        parent = tree[b.parent]
        assert b.start == parent.end and b.generation == parent.generation + 1
        share = b.supplied / parent.supplied
        assert b.radius == pytest.approx(parent.radius * share ** (1 / DIAMETER_EXPONENT))
        assert b.parent < tree.index(b)


def test_ends_stay_inside_and_the_tree_is_deterministic(ball):
    def inside(p):
        return float(np.linalg.norm(p)) <= 40.0

    tree = grow_tree(ball, np.array([0.0, 0.0, 38.0]), 3.0, 3, inside=inside)
    assert all(inside(np.array(b.end)) for b in tree)
    again = grow_tree(ball, np.array([0.0, 0.0, 38.0]), 3.0, 3, inside=inside)
    assert [(b.start, b.end, b.radius) for b in tree] == [(b.start, b.end, b.radius) for b in again]


def test_bad_regions_fail_in_one_line():
    with pytest.raises(ValueError, match="non-empty"):
        grow_tree(np.zeros((0, 3)), np.zeros(3), 1.0, 0)
    with pytest.raises(ValueError, match="radius"):
        grow_tree(np.ones((4, 3)), np.zeros(3), 0.0, 0)


@pytest.fixture(scope="module")
def subject():
    from scripts.phantom.anatomy import Anatomy

    return Anatomy.sample(np.random.default_rng(5))


def _midpoints(segs):
    return np.array([(np.array(s.p0) + np.array(s.p1)) / 2 for s in segs])


def test_phantom_airways_reach_the_sixth_generation_in_every_lobe_and_arteries_run_beside_them(subject):
    from scripts.phantom.trees import AIRWAY_MIN_RADIUS, airway_wall, build_trees

    trees = build_trees(subject)
    peripheral = [s for s in trees.airway if not s.central]
    for lobe in range(1, 6):
        in_lobe = [s for s in peripheral if s.lobe == lobe]
        assert max(s.generation for s in in_lobe) >= 7, lobe
        # generation 6 is still over a voxel across at 1.25 mm (Weibel: lumen diameter ~2.8 mm there)
        assert min(2 * s.r0 for s in in_lobe if s.generation == 6) > 1.25
    # division stops at the minimum radius: nothing beyond one division past it (~generation 8-10)
    assert np.median([s.r0 for s in peripheral if s.generation == max(p.generation for p in peripheral)]) < (
        AIRWAY_MIN_RADIUS
    )
    # each bronchus has an artery beside it, about one lumen + wall + artery away; the veins run elsewhere
    bronchi = [s for s in peripheral if s.generation >= 3]
    mid_b = _midpoints(bronchi)
    for vessels, near in ((trees.artery, True), (trees.vein, False)):
        mid_v = _midpoints([s for s in vessels if not s.central])
        nearest = np.sqrt(((mid_b[:, None, :] - mid_v[None, :, :]) ** 2).sum(-1)).min(axis=1)
        reach = np.array([2.1 * s.r0 + airway_wall(s.r0) + 0.3 for s in bronchi])
        close = (nearest <= reach + 1.0).mean()
        assert (close > 0.9) if near else (close < 0.5), (near, close)
    # vessels branch further than the airways, out towards the pleura
    assert len([s for s in trees.artery if not s.central]) > 2 * len(peripheral)
    assert build_trees(subject) == trees  # nothing random


def test_phantom_vessels_are_the_lungs_dominant_bright_structure():
    from scripts.phantom import generate_case

    case = generate_case(128, 3, findings="normal")
    lungs = case.lobe > 0
    vessel_fraction = case.vessel.sum() / lungs.sum()
    assert 0.02 < vessel_fraction < 0.08, vessel_fraction  # CT: ~3-5 % of lung volume is vessel
    # of what is brighter than -300 HU inside the lungs, most is vessel (the rest: bronchial walls)
    bright = (case.ct_hu > -300) & lungs
    assert (case.vessel.astype(bool) & bright).sum() > 0.6 * bright.sum()


def test_a_coarse_grid_grows_only_the_vessels_it_draws_and_draws_the_same(monkeypatch):
    """generate_case stops vessel division at the thinnest tube its grid draws: same arrays as the full trees."""
    import scripts.phantom.case as case_module
    from scripts.phantom.trees import build_trees

    coarse = case_module.generate_case(64, 3, None)
    monkeypatch.setattr(case_module, "build_trees", lambda anat, drawn_radius=0.0: build_trees(anat))
    full = case_module.generate_case(64, 3, None)
    for key in ("ct_hu", "lobe", "airway", "vessel", "tissue"):
        np.testing.assert_array_equal(getattr(coarse, key), getattr(full, key), err_msg=key)
    assert coarse.report == full.report
    grown, complete = coarse.truth["tree_segments"], full.truth["tree_segments"]
    assert grown["airway"] == complete["airway"] and grown["vein"] < complete["vein"] / 5
