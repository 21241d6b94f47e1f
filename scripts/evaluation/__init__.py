"""Evaluation of synthetic chest CT (docs/evaluation.md): anatomy measures, distribution distances, prompt adherence,
segmentation by the joint model, memorisation audit, and the report that gathers them.

Modules: ``anatomy_measures`` (measures + backends), ``features`` (feature networks and weights), ``distances``
(FID/MMD/2.5D FID), ``adherence``, ``segmentation``, ``memorisation``, ``agreement`` (phantom truth check),
``data`` (reading volumes), ``report``, ``run`` (the command). The anatomy measures' masks come from
:mod:`scripts.anatomy` (classical methods and the TotalSegmentator integration), a layer below this one.
See docs/evaluation.md.
"""

from __future__ import annotations

from .anatomy_measures import MEASURES, measure_ct
from .run import PARTS, run_evaluation

__all__ = ["MEASURES", "PARTS", "measure_ct", "run_evaluation"]
