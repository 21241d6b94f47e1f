"""Findings: what can be asked for (types, sides, severities), how a request is parsed, and the random default mix.

A request is a :class:`FindingSpec` (parsed from strings such as ``"effusion:right:large,cardiomegaly"``);
:meth:`FindingSpec.resolve` turns it into concrete :class:`Finding` objects for one case, drawing any side or
severity left open, and the target measure of each severity. ``lesions.py`` paints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TYPES = ("effusion", "cardiomegaly", "emphysema", "bullae", "consolidation", "nodule")
SIDES = ("left", "right", "bilateral")
SEVERITIES = ("small", "moderate", "large")
_SEVERITY_SYNONYMS = {"mild": "small", "trace": "small", "severe": "large", "marked": "large", "massive": "large"}
LOBE_TOKENS = {"lul": 1, "lll": 2, "rul": 3, "rml": 4, "rll": 5}
LEFT_LOBES, RIGHT_LOBES = (1, 2), (3, 4, 5)

# --- severity ranges: the report's word for a measured value (documented in docs/phantom.md) ---------------------
# pleural effusion volume per side (mL); generation aims inside the narrower target ranges so that
# voxelisation never moves a case across a boundary
EFFUSION_ML = {"small": (20.0, 300.0), "moderate": (300.0, 800.0), "large": (800.0, float("inf"))}
EFFUSION_TARGET_ML = {"small": (90.0, 220.0), "moderate": (380.0, 700.0), "large": (900.0, 1300.0)}
# cardiothoracic ratio; below 0.5 the heart size is normal
CTR_RANGES = {"small": (0.5, 0.58), "moderate": (0.58, 0.65), "large": (0.65, 1.0)}
CTR_TARGET = {"small": (0.53, 0.565), "moderate": (0.595, 0.635), "large": (0.67, 0.74)}
# emphysema: fraction of the affected lung(s) made low-attenuation (< -950 HU)
EMPHYSEMA_FRACTION = {"small": (0.05, 0.10), "moderate": (0.14, 0.22), "large": (0.28, 0.40)}
# bullae: (count range, radius range mm)
BULLAE = {"small": ((1, 1), (9.0, 13.0)), "moderate": ((2, 3), (12.0, 18.0)), "large": ((3, 5), (17.0, 26.0))}
# consolidation: fraction of the lobe consolidated
CONSOLIDATION_FRACTION = {"small": (0.12, 0.25), "moderate": (0.35, 0.55), "large": (0.75, 0.95)}
# nodule diameter (mm)
NODULE_MM = {"small": (4.0, 8.0), "moderate": (10.0, 18.0), "large": (22.0, 30.0)}

# --- the random default mix (docs/phantom.md) -------------------------------------------------------------------
P_NORMAL = 0.3
COUNT_WEIGHTS = {1: 0.5, 2: 0.35, 3: 0.15}
TYPE_WEIGHTS = {
    "effusion": 0.25,
    "cardiomegaly": 0.2,
    "emphysema": 0.15,
    "bullae": 0.05,
    "consolidation": 0.15,
    "nodule": 0.2,
}
SIDE_WEIGHTS = {
    "effusion": {"left": 0.25, "right": 0.25, "bilateral": 0.5},
    "emphysema": {"left": 0.1, "right": 0.1, "bilateral": 0.8},
    "bullae": {"left": 0.3, "right": 0.3, "bilateral": 0.4},
    "consolidation": {"left": 0.4, "right": 0.6},
    "nodule": {"left": 0.45, "right": 0.55},
}
_EXAMPLE = "e.g. 'effusion:right:large,cardiomegaly:moderate', 'nodule:rul:small', 'normal' or 'random'"


def severity_of(value: float, ranges: dict[str, tuple[float, float]]) -> str | None:
    """The severity word whose [low, high) range holds ``value``; None below the smallest range."""
    for word in SEVERITIES:
        low, high = ranges[word]
        if low <= value < high:
            return word
    return "large" if value >= ranges["large"][0] else None


@dataclass(frozen=True)
class Finding:
    """One requested or resolved finding.

    Args:
        type: one of :data:`TYPES`.
        side: ``left``, ``right``, ``bilateral`` or None (cardiomegaly; or not yet drawn).
        severity: ``small``, ``moderate``, ``large`` or None (not yet drawn).
        lobe: lobe label 1..5 for consolidation and nodules (None: drawn on the side).
        parameters: generating parameters once resolved (targets, sizes, positions).
    """

    type: str
    side: str | None = None
    severity: str | None = None
    lobe: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict, compare=False)

    def sides(self) -> tuple[str, ...]:
        """The concrete sides this finding touches."""
        return ("left", "right") if self.side == "bilateral" else ((self.side,) if self.side else ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "side": self.side,
            "severity": self.severity,
            "lobe": self.lobe,
            "parameters": self.parameters,
        }


def _parse_item(item: str, text: str) -> Finding:
    tokens = [t.strip().lower() for t in item.split(":")]
    kind = tokens[0]
    if kind not in TYPES:
        raise ValueError(f"unknown finding {kind!r} in {text!r}; expected one of {', '.join(TYPES)} ({_EXAMPLE})")
    side = severity = None
    lobe = None
    for tok in tokens[1:]:
        tok = _SEVERITY_SYNONYMS.get(tok, tok)
        if tok in SEVERITIES and severity is None:
            severity = tok
        elif tok in SIDES and side is None and lobe is None:
            side = tok
        elif tok in LOBE_TOKENS and side is None and kind in ("consolidation", "nodule"):
            lobe = LOBE_TOKENS[tok]
            side = "left" if lobe in LEFT_LOBES else "right"
        else:
            raise ValueError(
                f"cannot read {tok!r} in finding {item!r}; after the type give at most one side "
                f"({'/'.join(SIDES)}, or a lobe {'/'.join(LOBE_TOKENS)} for consolidation and nodule) and one "
                f"severity ({'/'.join(SEVERITIES)}) ({_EXAMPLE})"
            )
    if kind == "cardiomegaly" and side is not None:
        raise ValueError(f"cardiomegaly takes no side, got {item!r}; write e.g. 'cardiomegaly:moderate'")
    if kind in ("consolidation", "nodule") and side == "bilateral":
        raise ValueError(f"{kind} is drawn in one lung; for both write two items, e.g. '{kind}:left,{kind}:right'")
    return Finding(kind, side, severity, lobe)


@dataclass(frozen=True)
class FindingSpec:
    """A request for findings: ``findings`` to draw in every case, or ``random`` for the default mix.

    An empty tuple with ``random=False`` asks for normal cases. Parse strings with :meth:`parse`.
    """

    findings: tuple[Finding, ...] = ()
    random: bool = False

    @classmethod
    def parse(cls, text: str | None) -> FindingSpec:
        """Parse ``"type[:side|lobe][:severity],..."``, ``"normal"`` / ``"none"`` or ``"random"`` (or None)."""
        if text is None or text.strip().lower() in ("", "random"):
            return cls(random=True)
        if text.strip().lower() in ("normal", "none"):
            return cls()
        items = [s for s in (p.strip() for p in text.split(",")) if s]
        if any(s.lower() in ("normal", "none", "random") for s in items):
            raise ValueError(f"'normal' and 'random' stand alone, got {text!r} ({_EXAMPLE})")
        findings = tuple(_parse_item(item, text) for item in items)
        _check_conflicts(findings, text)
        return cls(findings=findings)

    @classmethod
    def normal(cls) -> FindingSpec:
        return cls()

    def resolve(self, rng: np.random.Generator) -> list[Finding]:
        """Concrete findings for one case: the random mix, or the request with open sides/severities drawn."""
        requested = _random_mix(rng) if self.random else list(self.findings)
        return [_resolve(f, rng) for f in requested]

    def describe(self) -> str:
        if self.random:
            return "random"
        if not self.findings:
            return "normal"
        return ",".join(":".join(t for t in (f.type, f.side, f.severity) if t) for f in self.findings)


def _check_conflicts(findings: tuple[Finding, ...], text: str) -> None:
    """At most one cardiomegaly; effusion, emphysema and bullae at most once per side."""
    seen: dict[tuple[str, str], bool] = {}
    for f in findings:
        if f.type in ("consolidation", "nodule"):
            continue
        sides = f.sides() or ("any",)
        if f.side is None and f.type != "cardiomegaly":
            sides = ("left", "right")
        for side in sides:
            if (f.type, side) in seen or (f.type, "any") in seen:
                raise ValueError(f"{f.type} is asked for twice on the {side} side in {text!r}; give it once")
            seen[(f.type, side)] = True


def _random_mix(rng: np.random.Generator) -> list[Finding]:
    if rng.random() < P_NORMAL:
        return []
    count = int(rng.choice(list(COUNT_WEIGHTS), p=list(COUNT_WEIGHTS.values())))
    weights = np.array(list(TYPE_WEIGHTS.values()))
    kinds = rng.choice(list(TYPE_WEIGHTS), size=count, replace=False, p=weights / weights.sum())
    return [Finding(str(k)) for k in kinds]


def _resolve(f: Finding, rng: np.random.Generator) -> Finding:
    """Draw what the request left open and the generating targets of its severity."""
    severity = f.severity or str(rng.choice(SEVERITIES))
    side = f.side
    if side is None and f.type != "cardiomegaly":
        options = SIDE_WEIGHTS[f.type]
        side = str(rng.choice(list(options), p=list(options.values())))
    lobe = f.lobe
    params: dict[str, Any] = {}
    u = rng.uniform
    if f.type == "effusion":
        sides = ("left", "right") if side == "bilateral" else (side,)
        params["target_ml"] = {s: round(float(u(*EFFUSION_TARGET_ML[severity])), 1) for s in sides}
    elif f.type == "cardiomegaly":
        params["target_ctr"] = round(float(u(*CTR_TARGET[severity])), 4)
    elif f.type == "emphysema":
        params["target_fraction"] = round(float(u(*EMPHYSEMA_FRACTION[severity])), 4)
    elif f.type == "bullae":
        (lo, hi), radii = BULLAE[severity]
        sides = ("left", "right") if side == "bilateral" else (side,)
        params["count"] = {s: int(rng.integers(lo, hi + 1)) for s in sides}
        params["radius_mm_range"] = list(radii)
    elif f.type == "consolidation":
        lobe = lobe or int(rng.choice(LEFT_LOBES if side == "left" else RIGHT_LOBES))
        params["target_fraction"] = round(float(u(*CONSOLIDATION_FRACTION[severity])), 4)
    elif f.type == "nodule":
        lobe = lobe or int(rng.choice(LEFT_LOBES if side == "left" else RIGHT_LOBES))
        params["diameter_mm"] = round(float(u(*NODULE_MM[severity])), 1)
    return Finding(f.type, side, severity, lobe, params)
