"""The phantom's voxel grid and the drawing primitives that work on it (tubes, spheres, smooth noise).

Everything is defined in millimetres in RAS world coordinates (x towards the patient's right, y anterior,
z superior) with the centre of the volume at the origin, so a structure looks the same at every array size;
only the sampling changes. Arrays are indexed (x, y, z).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FOV_MM = 320.0  # fixed physical field of view: 256³ → 1.25 mm voxels, 64³ → 5 mm
MIN_SIZE = 32
MAX_SIZE = 512


def check_size(size: int) -> int:
    """Return ``size`` if it is a valid phantom edge length, else raise a one-line ValueError naming the fix."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer multiple of 8 between {MIN_SIZE} and {MAX_SIZE}, got {size!r}")
    if size % 8 or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE} (e.g. 64 or 256), got {size}")
    return int(size)


@dataclass(frozen=True)
class Grid:
    """An isotropic cubic grid of ``size``³ voxels covering ``FOV_MM`` centred on the world origin."""

    size: int

    @property
    def spacing(self) -> float:
        return FOV_MM / self.size

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    @property
    def origin(self) -> float:
        """World coordinate (mm) of voxel index 0 along every axis (voxel centres, as in ``ras_affine``)."""
        return -self.spacing * (self.size - 1) / 2.0

    def axis(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """World coordinates (float32, mm) of voxel centres ``lo..hi-1`` along one axis."""
        hi = self.size if hi is None else hi
        return (self.origin + self.spacing * np.arange(lo, hi)).astype(np.float32)

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x (n,1,1), y (1,n,1), z (1,1,n) world coordinates of the whole grid."""
        a = self.axis()
        return a[:, None, None], a[None, :, None], a[None, None, :]

    def index_box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres can lie in the world box [lo_mm, hi_mm]; None if empty."""
        lo = np.maximum(np.floor((np.asarray(lo_mm) - self.origin) / self.spacing).astype(int), 0)
        hi = np.minimum(np.ceil((np.asarray(hi_mm) - self.origin) / self.spacing).astype(int) + 1, self.size)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def box_coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates of the voxels inside an index box."""
        ax = [self.axis(s.start, s.stop) for s in box]
        return ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]

    def voxel_of(self, point_mm: np.ndarray) -> tuple[int, int, int]:
        """Index of the voxel whose centre is nearest to a world point (clipped to the grid)."""
        idx = np.rint((np.asarray(point_mm, dtype=np.float64) - self.origin) / self.spacing).astype(int)
        return tuple(int(i) for i in np.clip(idx, 0, self.size - 1))  # type: ignore[return-value]


def tubes_voxels(
    grid: Grid, segments: np.ndarray, min_radius: float = 0.0, grow: float = 0.0, chunk_voxels: int = 1 << 21
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The voxels that tapered tubes cover, computed for all of them at once.

    Each tube is examined inside its own bounding box only (over the whole volume a 256³ tree would cost
    O(volume) per tube), and the boxes of many tubes are flattened into one array pass: a 256³ vascular tree is
    some 15 000 tubes of a few hundred voxels each, and one Python step per tube took most of a case's time.

    Args:
        grid: the voxel grid.
        segments: (n, 8) array of tubes, each ``x0, y0, z0, x1, y1, z1, r0, r1`` (mm), radius tapering linearly.
        min_radius: every tube is at least this thick (mm).
        grow: mm added to every radius after ``min_radius`` (a margin around the tubes).
        chunk_voxels: box voxels examined at a time (bounds the memory: ~40 bytes each).

    Yields:
        (tube index, flat voxel index into ``grid.shape``) of every covered voxel, tubes in order; a voxel
        covered by several tubes appears once per tube.
    """
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 8)
    p0 = segments[:, 0:3].astype(np.float32)
    p1 = segments[:, 3:6].astype(np.float32)
    r0, r1 = segments[:, 6], segments[:, 7]
    reach = (np.maximum(np.maximum(r0, r1), min_radius) + grow).astype(np.float32)[:, None]
    lo = np.maximum(np.floor((np.minimum(p0, p1) - reach - grid.origin) / grid.spacing).astype(np.int64), 0)
    hi = np.minimum(np.ceil((np.maximum(p0, p1) + reach - grid.origin) / grid.spacing).astype(np.int64) + 1, grid.size)
    extent = np.maximum(hi - lo, 0)
    count = extent.prod(axis=1)
    d = p1 - p0
    # one float32 dot product per tube, as the tubes were drawn one at a time: the same voxels to the last bit
    length2 = np.array([float(v @ v) or 1e-12 for v in d], dtype=np.float32)
    slope = (r1 - r0).astype(np.float32)
    axis = grid.axis()
    ends = np.cumsum(count)
    first = 0
    while first < len(count):
        last = int(np.searchsorted(ends, ends[first] - count[first] + chunk_voxels, side="right"))
        last = max(last, first + 1)
        seg = np.repeat(np.arange(first, last), count[first:last])
        if len(seg):
            k = np.arange(len(seg)) - np.repeat(np.cumsum(count[first:last]) - count[first:last], count[first:last])
            ny, nz = extent[seg, 1], extent[seg, 2]
            ix, iy, iz = lo[seg, 0] + k // (ny * nz), lo[seg, 1] + (k // nz) % ny, lo[seg, 2] + k % nz
            rx, ry, rz = axis[ix] - p0[seg, 0], axis[iy] - p0[seg, 1], axis[iz] - p0[seg, 2]
            dx, dy, dz = d[seg, 0], d[seg, 1], d[seg, 2]
            t = np.clip((rx * dx + ry * dy + rz * dz) / length2[seg], np.float32(0), np.float32(1))
            dist = np.sqrt((rx - t * dx) ** 2 + (ry - t * dy) ** 2 + (rz - t * dz) ** 2)
            radius = np.maximum(r0[seg].astype(np.float32) + slope[seg] * t, np.float32(min_radius))
            if grow:
                radius += np.float32(grow)
            inside = dist <= radius
            yield seg[inside], np.ravel_multi_index((ix[inside], iy[inside], iz[inside]), grid.shape)
        first = last


def sphere_box(grid: Grid, centre: np.ndarray, radius: float) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Index box around a sphere and the distance (mm) of its voxels to the centre."""
    c = np.asarray(centre, dtype=np.float32)
    box = grid.index_box(c - radius, c + radius)
    if box is None:
        return None
    x, y, z = grid.box_coords(box)
    return box, np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)


def smooth_noise(shape: tuple[int, ...], spacing: float, cell_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (float32) with features about ``cell_mm`` across.

    White noise on a coarse lattice of ``cell_mm`` is interpolated linearly to the voxel grid: far cheaper than
    filtering full-resolution noise, and the feature size stays the same in mm at every array size.
    """
    coarse_shape = tuple(max(2, int(np.ceil(n * spacing / cell_mm)) + 1) for n in shape)
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    # linear interpolation is separable: one axis at a time (a 256³ lung field in ~0.05 s; ndimage.zoom took 0.25)
    for axis, n in enumerate(shape):
        c = field.shape[axis]
        position = np.arange(n, dtype=np.float64) * ((c - 1) / max(n - 1, 1))  # lattice ends on the end voxels
        below = np.minimum(position.astype(np.int64), c - 2)
        weight = (position - below).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        lo, hi = np.take(field, below, axis=axis), np.take(field, below + 1, axis=axis)
        field = lo + (hi - lo) * weight
    field -= field.mean()
    flat = field.reshape(-1)
    std = float(np.sqrt(flat @ flat / flat.size))  # ndarray.std took 0.2 s on a 256³ field, the dot 0.01
    if std > 0:
        field /= std
    return field


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a boolean mask (labelled inside its bounding box only)."""
    if not mask.any():
        return mask
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    labels, count = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask)
    out[box] = labels == int(sizes.argmax())
    return out
