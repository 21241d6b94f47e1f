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
