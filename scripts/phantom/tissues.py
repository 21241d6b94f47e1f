"""Tissue classes of the phantom and their CT numbers.

The phantom is painted as a tissue label map first; the CT is then one table look-up plus noise, so a new
tissue is one line here. Mean HU values follow standard non-contrast chest CT figures.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue labels of the internal (and written ``tissue.nii.gz``) label map."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3
    MARROW = 4
    CARTILAGE = 5
    DISC = 6
    CORD = 7
    MEDIASTINUM = 8  # mediastinal and neck soft tissue, mostly fat
    HEART = 9
    PERICARDIAL_FAT = 10
    BLOOD = 11  # aorta and pulmonary trunk
    LIVER = 12
    ABDOMEN = 13
    LUNG = 14
    FISSURE = 15
    AIRWAY_LUMEN = 16
    AIRWAY_WALL = 17
    PULM_VESSEL = 18
    EFFUSION = 19
    ATELECTASIS = 20
    EMPHYSEMA = 21
    BULLA = 22
    CONSOLIDATION = 23
    NODULE = 24


# mean HU and noise standard deviation (HU) per tissue
_HU = {
    Tissue.AIR: (-1000, 6),
    Tissue.FAT: (-100, 12),
    Tissue.MUSCLE: (45, 12),
    Tissue.BONE: (750, 80),
    Tissue.MARROW: (260, 40),
    Tissue.CARTILAGE: (130, 25),
    Tissue.DISC: (85, 12),
    Tissue.CORD: (25, 10),
    Tissue.MEDIASTINUM: (-75, 25),
    Tissue.HEART: (40, 10),
    Tissue.PERICARDIAL_FAT: (-95, 12),
    Tissue.BLOOD: (42, 10),
    Tissue.LIVER: (58, 10),
    Tissue.ABDOMEN: (35, 15),
    Tissue.LUNG: (-858, 14),
    Tissue.FISSURE: (-720, 30),
    Tissue.AIRWAY_LUMEN: (-1000, 8),
    Tissue.AIRWAY_WALL: (-150, 60),  # a 1-2 mm wall is partial-volumed with lumen and lung at these spacings
    Tissue.PULM_VESSEL: (38, 15),
    Tissue.EFFUSION: (15, 7),
    Tissue.ATELECTASIS: (-450, 60),
    Tissue.EMPHYSEMA: (-978, 9),
    Tissue.BULLA: (-996, 4),
    Tissue.CONSOLIDATION: (32, 15),
    Tissue.NODULE: (38, 12),
}
NUM_TISSUES = len(Tissue)
HU_MEAN = np.array([_HU[Tissue(i)][0] for i in range(NUM_TISSUES)], dtype=np.float32)
HU_SD = np.array([_HU[Tissue(i)][1] for i in range(NUM_TISSUES)], dtype=np.float32)


def lut(*tissues: Tissue) -> np.ndarray:
    """Boolean look-up table over tissue labels: ``lut(A, B)[label_map]`` is the mask of A ∪ B, in one pass."""
    table = np.zeros(NUM_TISSUES, dtype=bool)
    table[list(tissues)] = True
    return table


# tissues a lung (lobe) mask covers: parenchyma and everything inside it except the airway lumen, which has its
# own channel, and pleural fluid, which lies outside the lung
LUNG_TISSUES = (
    Tissue.LUNG,
    Tissue.FISSURE,
    Tissue.AIRWAY_WALL,
    Tissue.PULM_VESSEL,
    Tissue.ATELECTASIS,
    Tissue.EMPHYSEMA,
    Tissue.BULLA,
    Tissue.CONSOLIDATION,
    Tissue.NODULE,
)
# tissues a new lesion may replace (it never paints over airway lumen, bone or the mediastinum)
PARENCHYMA = (Tissue.LUNG, Tissue.FISSURE, Tissue.PULM_VESSEL, Tissue.AIRWAY_WALL, Tissue.EMPHYSEMA)
