"""Turn the results of the evaluation parts into ``report.md`` and ``report.json`` (figures are written by the parts).

Each part's result is a JSON-ready dict; :data:`SECTIONS` maps a part to the function that renders it as Markdown,
so a new part is one entry here and one in :mod:`scripts.evaluation.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scripts.data.io import write_json, write_text
from scripts.evaluation.adherence import study_markdown
from scripts.evaluation.agreement import agreement_markdown
from scripts.evaluation.anatomy_maps import maps_markdown
from scripts.evaluation.anatomy_measures import MEASURES
from scripts.evaluation.memorisation import audit_markdown
from scripts.evaluation.segmentation import segmentation_markdown


def _measures_md(result: dict) -> str:
    groups = [g for g in ("synthetic", "real") if g in result["summary"]]
    lines = [
        "| measure | unit | " + " | ".join(f"{g} mean ± sd (n)" for g in groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for key, (unit, _) in MEASURES.items():
        cells = []
        for g in groups:
            s = result["summary"][g].get(key)
            cells.append("—" if s is None else f"{s['mean']:.4g} ± {s['std']:.3g} ({s['n']})")
        if any(c != "—" for c in cells):
            lines.append(f"| {key} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nBackend: {result['backend']}.\n"


def _distances_md(result: dict) -> str:
    lines = ["| distance | value | synthetic n | real n |", "|---|---|---|---|"]
    for key in ("fid", "mmd"):
        if key in result:
            lines.append(
                f"| {key.upper()} (3D {result['network']}) | {result[key]:.6g} "
                f"| {result['n_synthetic']} | {result['n_real']} |"
            )
    for plane, value in result.get("fid_2p5d", {}).items():
        lines.append(f"| 2.5D FID {plane} | {value:.6g} | {result['n_synthetic']} | {result['n_real']} |")
    notes = "".join(f"\n{n}" for n in result.get("notes", []))
    return "\n".join(lines) + "\n" + notes + ("\n" if notes else "")


def _ctclip_md(result: dict) -> str:
    def value(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    return (
        "| score | value | volumes |\n|---|---|---|\n"
        f"| CT-CLIP image-text (CLIPScore) | {value(result['clip_score_i2t'])} | {result['n_i2t']} |\n"
        f"| CT-CLIP image-image (CLIPScore_I2I) | {value(result['clip_score_i2i'])} | {result['n_i2i']} |\n"
        f"| mean (CLIPScore_mean) | {value(result['clip_score_mean'])} | |\n\n"
        f"Each score is max(100 x cosine, 0) of CT-CLIP latents, averaged over the {result['n_volumes']} generated "
        "volumes; image-image pairs a volume with the real case its prompt was taken from.\n"
    )


SECTIONS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "measures": ("Anatomy measures (paper Table 1)", _measures_md),
    "distances": ("Distribution distances (paper §IV-B; MAISI 2.5D FID)", _distances_md),
    "adherence": ("Prompt adherence (paper Tables 2-4, Fig. 5)", lambda r: study_markdown(r["pairs"])),
    "maps": ("Generated anatomy maps: fractions, self-consistency, lobe order", maps_markdown),
    "segmentation": ("Segmentation by the joint model (paper Table 5)", segmentation_markdown),
    "memorisation": ("Memorisation audit", lambda r: audit_markdown(r)),
    "agreement": ("Classical measures against the phantom's truth", agreement_markdown),
    "ctclip": ("CT-CLIP score (VLM3D text-to-CT challenge)", _ctclip_md),
}


def write_report(
    results: dict[str, dict], output_dir: str | Path, header: dict, overwrite: bool = False
) -> dict[str, Path]:
    """Write ``report.md`` and ``report.json`` into ``output_dir`` and return their paths."""
    output_dir = Path(output_dir)
    lines = ["# MedSyn-MONAI evaluation report", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()] + [""]
    for part, result in results.items():
        title, render = SECTIONS[part]
        lines += [f"## {title}", "", render(result)]
        for figure in result.get("figures", []):
            lines += [f"![{part}]({Path(figure).name})", ""]
    clean = {part: {k: v for k, v in r.items() if k != "thumbnails"} for part, r in results.items()}
    return {
        "markdown": write_text(output_dir / "report.md", "\n".join(lines), overwrite),
        "json": write_json(output_dir / "report.json", {"header": header, "results": clean}, overwrite),
    }
