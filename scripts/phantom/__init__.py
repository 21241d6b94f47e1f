"""Procedural chest-CT phantom with matching radiology reports: the bundle's built-in data.

Each case is a chest CT (int16 HU) with lobe, airway and vessel label maps, a report and a truth.json of every
generating parameter and measured quantity. See docs/phantom.md.

Example::

    from scripts.phantom import FindingSpec, generate_case, write_dataset

    case = generate_case(64, seed=0, findings="effusion:right:large,cardiomegaly")
    case.ct_hu.shape, case.truth["effusion_ml"], case.report
    write_dataset("data/phantom", num=16, size=64, seed=0, findings="normal")
"""

from __future__ import annotations

from .case import GENERATOR, VERSION, PhantomCase, generate_case
from .dataset import write_case, write_dataset
from .findings import SEVERITIES, SIDES, TYPES, Finding, FindingSpec
from .geometry import FOV_MM

__all__ = [
    "FOV_MM",
    "GENERATOR",
    "SEVERITIES",
    "SIDES",
    "TYPES",
    "VERSION",
    "Finding",
    "FindingSpec",
    "PhantomCase",
    "generate_case",
    "write_case",
    "write_dataset",
]
