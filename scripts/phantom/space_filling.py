"""A space-filling branching tree: the way the lungs' airways divide the volume they supply.

After Kitaoka, Takaki and Suki (J Appl Physiol 1999) and Tawhai, Pullan and Hunter (2000): every branch owns a
region of the organ (a cloud of points). It runs from its parent's end a fixed fraction of the way to its
region's centroid; the region is then halved by a plane through the branch, along the region's widest extent
across it, and each daughter takes one half and aims at that half's centroid. Diameters follow the flow, taken as
proportional to the volume supplied: ``d_daughter = d_parent · (share of the region)^(1/n)`` with n = 2.8
(Kitaoka's exponent; Murray's law has 3). A branch stops dividing when its region
holds too few points or its radius falls below a limit. The tree needs no voxel grid: the same subject has the
same tree at every array size, and nothing in it is random (the region decides every branch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DIAMETER_EXPONENT = 2.8  # Kitaoka et al. 1999: d ∝ flow^(1/n)
LENGTH_FRACTION = 0.4  # Tawhai et al. 2000: a branch runs 40 % of the way to its region's centroid


@dataclass(frozen=True, eq=False)
class Branch:
    """One straight branch (mm, RAS) of a space-filling tree.

    Args:
        start, end: the branch's axis.
        radius: lumen radius, constant along the branch.
        generation: its generation (the caller's root generation + the number of divisions above it).
        parent: index of the parent in the returned list, -1 for the root.
        supplied: number of region points it supplies (its flow, up to the lattice volume per point).
        region: the points a terminal branch supplies (a tree grown further from its end fills them: vessels
            beyond the last airway); None for branches that divide.
    """

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float
    generation: int
    parent: int
    supplied: int
    region: np.ndarray | None = None


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1 (a zero vector stays zero)."""
    # np.linalg.norm costs several µs on a 3-vector; trees call this tens of thousands of times per subject
    return v / max(float(np.sqrt(v @ v)), 1e-9)


def _halves(points: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``points`` by the plane through ``origin`` containing ``axis`` that cuts across their widest extent
    perpendicular to ``axis``."""
    rel = points - origin
    across = rel - np.outer(rel @ axis, axis)
    across = across - across.sum(axis=0) / len(across)  # sum / n: np.mean's overhead dominates on small arrays
    _, vectors = np.linalg.eigh(across.T @ across)
    side = across @ vectors[:, -1] > 0
    return points[side], points[~side]


def grow_tree(
    region: np.ndarray,
    start: np.ndarray,
    radius: float,
    generation: int,
    inside: Callable[[np.ndarray], bool] | None = None,
    min_points: int = 6,
    min_radius: float = 0.8,
    max_generation: int = 23,
) -> list[Branch]:
    """The space-filling tree that ``start`` supplies to ``region``.

    Args:
        region: (N, 3) points (mm) of the volume to supply, e.g. a lobe sampled on a lattice.
        start: where the root branch begins (mm), e.g. the end of a lobar bronchus.
        radius: the root branch's radius (mm).
        generation: the root branch's generation (trachea 0, main bronchi 1, lobar bronchi 2, ...).
        inside: optional test of a point (mm); a branch end it rejects is pulled back towards the branch start.
        min_points: a branch whose region holds fewer than twice this many points does not divide.
        min_radius: a branch thinner than this (mm) does not divide.
        max_generation: no division past this generation (the human airway tree ends near 23).

    Returns:
        the branches, parents before their daughters.
    """
    region = np.asarray(region, dtype=np.float64)
    if region.ndim != 2 or region.shape[1] != 3 or len(region) == 0:
        raise ValueError(f"region must be a non-empty (N, 3) point array, got shape {region.shape}")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    out: list[Branch] = []
    stack = [(region, np.asarray(start, dtype=np.float64), float(radius), int(generation), -1)]
    while stack:
        points, begin, r, gen, parent = stack.pop()
        to_centroid = points.sum(axis=0) / len(points) - begin
        distance = float(np.sqrt(to_centroid @ to_centroid))
        direction = to_centroid / max(distance, 1e-9)
        length = max(LENGTH_FRACTION * distance, 2.0 * r)
        end = begin + direction * length
        for shorter in (0.5, 0.25):
            if inside is None or inside(end):
                break
            end = begin + direction * length * shorter
        divides = len(points) >= 2 * min_points and r >= min_radius and gen < max_generation
        halves = [h for h in _halves(points, end, direction) if len(h)] if divides else []
        out.append(Branch(tuple(begin), tuple(end), r, gen, parent, len(points), None if len(halves) == 2 else points))
        index = len(out) - 1
        if len(halves) < 2:
            continue
        for half in halves:
            share = len(half) / len(points)
            stack.append((half, end, r * share ** (1.0 / DIAMETER_EXPONENT), gen + 1, index))
    return out
