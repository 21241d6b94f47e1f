"""Subject geometry: the random parameters of one body and the analytic shapes they define (mm, RAS).

Every shape is a function of world coordinates, so the same subject is drawn at any grid size and the airway and
vessel trees (``trees.py``) can ask "which lobe is this point in?" without a voxel grid. Coordinates are
x → patient's right, y → anterior, z → superior; the patient lies supine, so "posterior" is −y and is the
dependent side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

# the cardiothoracic ratio of a normal heart is drawn from this range (cardiomegaly raises it: findings.py)
NORMAL_CTR = (0.38, 0.47)


@dataclass(frozen=True)
class Anatomy:
    """Random parameters of one subject (all lengths in mm). Draw one with :meth:`sample`.

    Args:
        cx, cy: position of the body axis (x, y) in the field of view.
        cav_a, cav_b: lateral and antero-posterior semi-axes of the inner thoracic (pleural) cavity at its widest,
            the level of the diaphragm domes; above it the rib cage narrows towards the apex (``apex_width``).
        rib: rib-layer thickness; muscle, fat: body-wall layers outside the ribs.
        z_apex: height of the lung apices; z_carina: height of the tracheal carina.
        z_dia_right, z_dia_left: height of the diaphragm domes (the right one sits higher, over the liver).
        dome_drop: how far the diaphragm falls from the dome to the costophrenic angles.
        mediastinum: half-width of the mediastinal band between the lungs.
        heart_x, heart_y, heart_z: centre of the heart; heart_rx/ry/rz: its semi-axes along its long axis, across
            it and along z; the long axis points from the right atrium to the apex, left and anterior,
            ``heart_angle`` radians from the patient's left (the width left-right sets the CTR).
        fissure_left, fissure_right: height of the oblique fissures at the posterior chest wall.
        fissure_slope: fall of the oblique fissures per mm towards anterior.
        fissure_horizontal: height of the right horizontal fissure.
        trachea_radius: tracheal lumen radius.
        rib_pitch, rib_phase: spacing and phase of the ribs along z.
        apex_width: lateral width of the cavity at the apex as a fraction of its widest (the rib cage's taper).
    """

    cx: float
    cy: float
    cav_a: float
    cav_b: float
    rib: float
    muscle: float
    fat: float
    z_apex: float
    z_carina: float
    z_dia_right: float
    z_dia_left: float
    dome_drop: float
    mediastinum: float
    heart_x: float
    heart_y: float
    heart_z: float
    heart_rx: float
    heart_ry: float
    heart_rz: float
    fissure_left: float
    fissure_right: float
    fissure_slope: float
    fissure_horizontal: float
    trachea_radius: float
    rib_pitch: float
    rib_phase: float
    apex_width: float
    heart_angle: float

    @classmethod
    def sample(cls, rng: np.random.Generator, ctr: float | None = None) -> Anatomy:
        """Draw a subject; ``ctr`` fixes the heart's width as a fraction of the inner thoracic width."""
        u = rng.uniform
        cx, cy = u(-5, 5), u(-6, 6)
        cav_a, cav_b = 120 * u(0.9, 1.04), 90 * u(0.9, 1.08)
        rib, muscle = u(8, 10), u(8, 13)
        # fat is what varies most between people; the body (skin at cavity + 1 mm pleura + layers) must still fit
        # in the field of view, so a wide chest gets a thinner fat layer
        room = min(158 - abs(cx) - cav_a, 158 - abs(cy) - cav_b) - 1 - rib - muscle
        fat = float(max(2.0, min(u(6, 26), room)))
        z_apex = u(120, 134)
        z_carina = z_apex - u(60, 72)
        z_dia_right = u(-52, -36)
        z_dia_left = z_dia_right - u(8, 18)
        ctr = float(u(*NORMAL_CTR)) if ctr is None else float(ctr)
        width = ctr * cav_a  # half the heart's left-right extent
        grow = np.sqrt(ctr / 0.43)  # an enlarged heart grows in every direction, most in width
        heart_ry = min(0.36 * cav_b * grow, 0.55 * cav_b)
        heart_rz = 52 * grow
        heart_y = cy + 0.24 * cav_b
        heart_x = cx - u(14, 22)
        # keep the heart inside the cavity on the left whatever its width
        heart_x = max(heart_x, cx - 0.9 * cav_a + width)
        # the further draws come after all the others, so that adding them left every other parameter as it was
        apex_width = u(0.72, 0.82)
        # an enlarged heart's apex moves out to the left: its long axis turns towards the transverse
        heart_angle = np.deg2rad(u(30, 45)) * min(1.0, (0.43 / ctr) ** 2)
        # the long axis that gives a left-right half extent of `width` once turned by heart_angle
        c2, s2 = np.cos(heart_angle) ** 2, np.sin(heart_angle) ** 2
        heart_rx = float(np.sqrt(max(width**2 - heart_ry**2 * s2, heart_ry**2 * c2) / c2))
        return cls(
            cx=cx,
            cy=cy,
            cav_a=cav_a,
            cav_b=cav_b,
            rib=rib,
            muscle=muscle,
            fat=fat,
            z_apex=z_apex,
            z_carina=z_carina,
            z_dia_right=z_dia_right,
            z_dia_left=z_dia_left,
            dome_drop=u(45, 60),
            mediastinum=u(16, 21),
            heart_x=heart_x,
            heart_y=heart_y,
            heart_z=z_dia_left + 0.55 * heart_rz,
            heart_rx=heart_rx,
            heart_ry=heart_ry,
            heart_rz=heart_rz,
            fissure_left=z_carina + u(5, 20),
            fissure_right=z_carina + u(0, 15),
            fissure_slope=u(0.75, 0.95),
            fissure_horizontal=z_carina - u(28, 40),
            trachea_radius=u(7.0, 9.0),
            rib_pitch=u(23, 28),
            rib_phase=u(0, 28),
            apex_width=apex_width,
            heart_angle=heart_angle,
        )

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}

    # --- cross-sections ------------------------------------------------------------------------------------
    def taper(self, z: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Lateral and antero-posterior scale of the cavity at height ``z``: 1 at and below the diaphragm domes,
        narrowing quadratically to ``apex_width`` (laterally; a third of that antero-posteriorly) at the apex."""
        u = (z - self.z_dia_right) / (self.z_apex - self.z_dia_right)
        # plain min/max for one point: tree growing asks this ~20 000 times and np.clip costs ~15 µs on a float
        t = (np.clip(u, 0.0, 1.0) if isinstance(u, np.ndarray) else min(max(u, 0.0), 1.0)) ** 2
        return 1.0 - (1.0 - self.apex_width) * t, 1.0 - (1.0 - self.apex_width) / 3.0 * t

    def cavity_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float | None = None) -> np.ndarray:
        """Normalised radius² of the thoracic cavity ellipse at height ``z`` (≤ 1 inside; widest when None)."""
        return self.layer_q(x, y, 0.0, z)

    def lung_q(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radius² within each hemithorax: 0 at the centre of a lung's cross-section, 1 at its edge."""
        half = self.cav_a / 2
        return ((np.abs(x - self.cx) - half) / half) ** 2 + ((y - self.cy) / self.cav_b) ** 2

    def spine_centre(self) -> tuple[float, float]:
        """(x, y) of the vertebral body centre: posterior midline, bulging into the cavity."""
        return self.cx, self.cy - self.cav_b + 16.0

    def layer_q(self, x: np.ndarray, y: np.ndarray, extra: float, z: np.ndarray | float | None = None) -> np.ndarray:
        """Normalised radius² of the cavity ellipse at height ``z`` grown by ``extra`` mm (the body-wall layers)."""
        sa, sb = (1.0, 1.0) if z is None else self.taper(z)
        return ((x - self.cx) / (self.cav_a * sa + extra)) ** 2 + ((y - self.cy) / (self.cav_b * sb + extra)) ** 2

    # --- surfaces ------------------------------------------------------------------------------------------
    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the diaphragm under (x, y): domes at the lung centres, lower at the edges and posteriorly."""
        top = np.where(x > self.cx, self.z_dia_right, self.z_dia_left)
        q = np.minimum(self.lung_q(x, y), 1.3)
        posterior = np.clip(-(y - self.cy) / self.cav_b, 0, 1)
        return top - self.dome_drop * q - 22.0 * posterior

    def apex_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Top of the lung above (x, y): a dome over each lung's cross-section."""
        return self.z_apex - 75.0 * np.minimum(self.lung_q(x, y), 1.3)

    @cached_property
    def _heart_turn(self) -> tuple[float, float]:
        # cos and sin of the heart's turn, taken once: tree growing asks heart_q of ~15 000 single points
        return float(np.cos(self.heart_angle)), float(np.sin(self.heart_angle))

    def heart_q(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Normalised radius² of the heart ellipsoid grown by ``grow`` mm (scalars or arrays)."""
        c, s = self._heart_turn
        dx, dy = x - self.heart_x, y - self.heart_y
        along, across = dx * c - dy * s, dx * s + dy * c  # long axis towards the patient's left and anterior
        return (
            (along / (self.heart_rx + grow)) ** 2
            + (across / (self.heart_ry + grow)) ** 2
            + ((z - self.heart_z) / (self.heart_rz + grow)) ** 2
        )

    def heart_half_width(self) -> float:
        """Half the heart's left-right extent (mm): what the cardiothoracic ratio measures."""
        c2, s2 = np.cos(self.heart_angle) ** 2, np.sin(self.heart_angle) ** 2
        return float(np.sqrt(self.heart_rx**2 * c2 + self.heart_ry**2 * s2))

    def oblique_f(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed height (mm) above the oblique fissure of the point's side: > 0 in the upper (and middle) lobe."""
        z_post = np.where(x > self.cx, self.fissure_right, self.fissure_left)
        lateral = ((np.abs(x - self.cx) - self.cav_a / 2) / (self.cav_a / 2)) ** 2
        # the fissure runs from high posteriorly to the anterior diaphragm and bows gently laterally
        return z - (z_post - self.fissure_slope * (y - self.cy + self.cav_b) - 6.0 * lateral)

    def horizontal_f(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed height (mm) above the right horizontal fissure (slightly higher anteriorly)."""
        return z - (self.fissure_horizontal + 0.08 * (y - self.cy))

    # --- lungs ---------------------------------------------------------------------------------------------
    def lung_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box (lo, hi), mm, that holds every point of :meth:`lung_region`: the cavity at its widest, from
        the lowest costophrenic recess to the apex. Painting inside it alone skips half of a 256³ grid."""
        lowest = min(self.z_dia_right, self.z_dia_left) - 1.3 * self.dome_drop - 22.0
        lo = np.array([self.cx - self.cav_a, self.cy - self.cav_b, lowest])
        hi = np.array([self.cx + self.cav_a, self.cy + self.cav_b, self.z_apex])
        return lo, hi

    def lung_region(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean: inside a lung (before airways, vessels and findings are carved), broadcast over x, y, z."""
        cav = self.cavity_q(x, y, z) <= 1.0
        med = np.abs(x - self.cx) > self.mediastinum
        sx, sy = self.spine_centre()
        spine = (x - sx) ** 2 + (y - sy) ** 2 > 21.0**2
        cross = cav & med & spine
        vertical = (z < self.apex_z(x, y)) & (z > self.diaphragm_z(x, y))
        return cross & vertical & (self.heart_q(x, y, z, grow=4.0) > 1.0)

    def lobe_of(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
        """Lobe label 0..5 (lungmask order) of each point; ``inside`` may pass a precomputed lung region."""
        inside = self.lung_region(x, y, z) if inside is None else inside
        upper = self.oblique_f(x, y, z) > 0
        right = x > self.cx
        right_upper = self.horizontal_f(y, z) > 0
        u8 = np.uint8  # uint8 scalars keep the nested selections at one byte per voxel (int64 was 8× slower)
        upper_lobe = np.where(right, np.where(right_upper, u8(3), u8(4)), u8(1))
        lower_lobe = np.where(right, u8(5), u8(2))
        lobe = np.where(upper, upper_lobe, lower_lobe)
        return np.where(inside, lobe, u8(0)).astype(np.uint8, copy=False)

    def fissures(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, lobe: np.ndarray, half: float) -> np.ndarray:
        """Boolean: points of a lobe map within ``half`` mm of a fissure (the visible pleural lines)."""
        # distance to a plane z = c - s·y is |f| / sqrt(1 + s²)
        near_oblique = np.abs(self.oblique_f(x, y, z)) < half * np.sqrt(1 + self.fissure_slope**2)
        near_horizontal = (np.abs(self.horizontal_f(y, z)) < half) & ((lobe == 3) | (lobe == 4))
        return (lobe > 0) & (near_oblique | near_horizontal)

    def lobe_at(self, point: np.ndarray | tuple[float, float, float]) -> int:
        """Lobe label of one world point (mm): :meth:`lobe_of` in scalar arithmetic.

        Tree growing asks this thousands of times; NumPy's per-call overhead on scalars made it the slowest part
        of a 64³ case. ``tests/test_phantom_anatomy.py`` checks the two agree.
        """
        x, y, z = (float(c) for c in point)
        dx, dy = x - self.cx, y - self.cy
        sa, sb = self.taper(z)
        if (dx / (self.cav_a * sa)) ** 2 + (dy / (self.cav_b * sb)) ** 2 > 1.0 or abs(dx) <= self.mediastinum:
            return 0
        sx, sy = self.spine_centre()
        if (x - sx) ** 2 + (y - sy) ** 2 <= 21.0**2:
            return 0
        half = self.cav_a / 2
        lateral = ((abs(dx) - half) / half) ** 2
        q = min(lateral + (dy / self.cav_b) ** 2, 1.3)
        if z >= self.z_apex - 75.0 * q:
            return 0
        right = x > self.cx
        top = self.z_dia_right if right else self.z_dia_left
        if z <= top - self.dome_drop * q - 22.0 * min(max(-dy / self.cav_b, 0.0), 1.0):
            return 0
        if self.heart_q(x, y, z, grow=4.0) <= 1.0:
            return 0
        z_post = self.fissure_right if right else self.fissure_left
        if z - (z_post - self.fissure_slope * (dy + self.cav_b) - 6.0 * lateral) > 0:
            if not right:
                return 1
            return 3 if z - (self.fissure_horizontal + 0.08 * dy) > 0 else 4
        return 5 if right else 2

    def body_half_axes(self) -> tuple[float, float]:
        """Semi-axes of the skin surface."""
        extra = self.rib + self.muscle + self.fat + 2.0
        return self.cav_a + extra, self.cav_b + extra
