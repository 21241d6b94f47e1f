"""Anatomy masks for training data: lobes (0..5, LTRCLobes order), airway and vessels from a chest CT.

Modules, each one idea:

- :mod:`.classical`: weight-free methods (lungs, airway, vessels, approximate lobes); always available.
- :mod:`.base`: the backend interface, its errors and the registry.
- :mod:`.lungmask_backend`, :mod:`.totalseg_backend` (+ :mod:`.totalseg_runner`): optional deep-learning backends.
- :mod:`.backends`: the classical backend and ``auto`` selection per structure.
- :mod:`.batch`: the resumable batch runner; ``python -m scripts.anatomy`` is its command line.
- :mod:`.phantom_check`: Dice of the classical masks against the phantom's truth.

This file imports nothing, so :mod:`.totalseg_runner` also runs in a separate TotalSegmentator environment.
In the package's layer order (``scripts/__init__.py``) anatomy comes right after ``conventions``, ``data`` and
``phantom``, the only parts it imports; :mod:`scripts.evaluation` builds its anatomy measures on it.
"""
