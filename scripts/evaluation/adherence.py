"""Prompt adherence study (paper §IV-D): does a finding in the prompt change the measured anatomy?

For each prompt pair (a finding and its negation) the model generates N volumes per prompt; one anatomy measure
is taken on each (effusion volume, %LAA-950, cardiothoracic ratio, ...) and the two groups are compared with a
one-tailed two-sample t-test. The model enters only as a callable ``generate(prompt, num, seed) -> [(ct_hu,
spacing), ...]``, so the low-resolution stage alone, the full pipeline, or volumes generated earlier and read
from a folder (:func:`folder_generator`) all serve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm import tqdm

from scripts.evaluation.anatomy_measures import MEASURES, measure_ct
from scripts.evaluation.data import read_ct
from scripts.text.reports import read_json_file

Volume = tuple[np.ndarray, Sequence[float]]
Generator = Callable[[str, int, int], list[Volume]]
ALTERNATIVES = ("greater", "less")

# The paper's three pairs (Fig. 4 prompts paraphrased; the paper found "no bullae" with the higher %LAA-950).
DEFAULT_PAIRS = (
    {
        "name": "pleural effusion",
        "finding": "There are large bilateral pleural effusions.",
        "negation": "There is no pleural effusion.",
        "measure": "effusion_ml",
    },
    {
        "name": "bullous emphysema",
        "finding": "There are bullae in both upper lobes with emphysema.",
        "negation": "There are no bullae. No emphysema.",
        "measure": "laa950_percent",
    },
    {
        "name": "cardiomegaly",
        "finding": "There is cardiomegaly.",
        "negation": "The heart size is normal. There is no cardiomegaly.",
        "measure": "cardiothoracic_ratio",
    },
)


@dataclass(frozen=True)
class PromptPair:
    """One finding/negation pair.

    Args:
        name: short label used in tables and plots.
        finding: prompt that states the finding.
        negation: the same prompt with the finding negated.
        measure: key of :data:`scripts.evaluation.anatomy_measures.MEASURES` compared between the groups.
        alternative: ``greater`` (default) tests finding > negation, ``less`` tests finding < negation.
        phantom_findings: optional phantom finding spec of cases that have the finding (e.g.
            ``"effusion:bilateral:large"``), for the text-use probe (:mod:`scripts.evaluation.text_use`).
    """

    name: str
    finding: str
    negation: str
    measure: str
    alternative: str = "greater"
    phantom_findings: str | None = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            known = sorted(MEASURES)
            raise ValueError(f"pair {self.name!r}: unknown measure {self.measure!r}; expected one of {known}")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"pair {self.name!r}: alternative must be one of {ALTERNATIVES}, got {self.alternative!r}")


def load_pairs(source: str | Path | Sequence[dict] | None = None) -> list[PromptPair]:
    """Prompt pairs from a JSON file (a list, or ``{"pairs": [...]}``), a list of dicts, or the paper's defaults."""
    if source is None:
        items: Sequence[dict] = DEFAULT_PAIRS
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such file")
        content = read_json_file(source, "prompt-pairs file")
        if isinstance(content, dict) and "pairs" not in content:
            raise ValueError(f"{source}: no 'pairs' list; write {{\"pairs\": [...]}} or a bare list of pairs")
        items = content["pairs"] if isinstance(content, dict) else content
    else:
        items = source
    try:
        return [PromptPair(**item) for item in items]
    except TypeError as err:
        raise ValueError(
            f"bad prompt pair ({err}); keys are name, finding, negation, measure, alternative, phantom_findings"
        ) from None


def one_tailed_ttest(
    finding: Sequence[float], negation: Sequence[float], alternative: str = "greater", equal_var: bool = True
) -> dict[str, float]:
    """Two-sample t-test of finding > negation (``greater``) or finding < negation (``less``).

    Student's test by default (the paper's "two-sample t-test"); ``equal_var=False`` gives Welch's. Two groups with
    no spread at all give ``t = ±inf`` and p = 0 or 1 when their means differ, and p = 1 when they do not.
    """
    a, b = np.asarray(finding, dtype=np.float64), np.asarray(negation, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"t-test needs at least 2 values per group, got {len(a)} and {len(b)}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if a.var() == 0 and b.var() == 0:
        diff = a.mean() - b.mean() if alternative == "greater" else b.mean() - a.mean()
        return {"t": math.copysign(math.inf, diff) if diff else 0.0, "p": 0.0 if diff > 0 else 1.0}
    result = stats.ttest_ind(a, b, equal_var=equal_var, alternative=alternative)
    return {"t": float(result.statistic), "p": float(result.pvalue)}


def run_study(
    pairs: Sequence[PromptPair],
    generate: Generator,
    num: int = 32,
    seed: int = 0,
    measure: Callable[..., dict[str, float]] = measure_ct,
    equal_var: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Generate ``num`` volumes per prompt, measure each, and test every pair.

    Args:
        pairs: the prompt pairs.
        generate: ``generate(prompt, num, seed) -> [(ct_hu, spacing), ...]``.
        num: volumes per prompt (the paper: 32).
        seed: first seed; the negation uses the same seed as its finding so the pair differs only in the text.
        measure: ``measure(ct_hu, spacing, measures=[key]) -> {key: value}``.
        equal_var: Student's (True) or Welch's (False) t-test.
        progress: show a progress bar over the generated volumes.

    Returns:
        one dict per pair: the pair's fields, ``values`` (every volume's measure, NaN where it could not be
        measured), per group ``mean``/``std`` over the measured volumes, ``n`` (measured) and ``generated``, and
        ``t`` and ``p`` of the measured volumes (NaN when a group has fewer than 2).
    """
    results = []
    bar = tqdm(total=2 * num * len(pairs), desc="adherence", disable=not progress)
    for i, pair in enumerate(pairs):
        values: dict[str, list[float]] = {}
        for group in ("finding", "negation"):
            volumes = generate(getattr(pair, group), num, seed + 1000 * i)
            if len(volumes) < 2:
                raise ValueError(f"pair {pair.name!r}: {len(volumes)} volume(s) for the {group} prompt, need 2 or more")
            values[group] = []
            for ct_hu, spacing in volumes:
                values[group].append(float(measure(ct_hu, spacing, measures=[pair.measure])[pair.measure]))
                bar.update()
        # a volume the measure cannot read (e.g. no heart found: CTR is NaN) is counted, not averaged or tested
        measured = {g: np.asarray(v)[np.isfinite(v)] for g, v in values.items()}
        if min(len(v) for v in measured.values()) >= 2:
            test = one_tailed_ttest(measured["finding"], measured["negation"], pair.alternative, equal_var)
        else:
            test = {"t": math.nan, "p": math.nan}
        summary = {
            g: {
                "mean": float(np.mean(v)) if len(v) else math.nan,
                "std": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                "n": len(v),
                "generated": len(values[g]),
            }
            for g, v in measured.items()
        }
        results.append({**asdict(pair), "values": values, **summary, **test})
    bar.close()
    return results


def folder_volumes(folder: str | Path) -> dict[str, list[Path]]:
    """The CT files generated earlier in ``folder``, per prompt (whitespace normalised): ``*.json`` sidecars holding
    ``"prompt"``.

    The CT of a sidecar is its ``"image"`` (path relative to the sidecar), else ``"files"["ct"]`` (the inference
    writer's sidecar), else ``<stem>_ct.nii.gz`` or ``<stem>.nii.gz`` beside it. Each prompt's files are in the order
    of their sidecar's integer ``"seed"`` (those without one last), then of file name, so the first ``num`` are the
    lowest seeds (file names alone put ``seed10`` before ``seed2``).
    """
    folder = Path(folder)
    by_prompt: dict[str, list[tuple[float, str, Path]]] = {}
    for sidecar in sorted(folder.rglob("*.json")):
        meta = read_json_file(sidecar, "sidecar")
        if not isinstance(meta, dict) or not meta.get("prompt"):
            continue
        stem = sidecar.name.removesuffix(".json")
        named = meta.get("image") or (meta.get("files") or {}).get("ct")
        candidates = [named] if named else [f"{stem}_ct.nii.gz", f"{stem}.nii.gz"]
        image = next((sidecar.parent / c for c in candidates if (sidecar.parent / c).is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{sidecar}: no CT file ({' or '.join(candidates)}) beside it")
        seed = meta.get("seed")
        order = float(seed) if isinstance(seed, int) and not isinstance(seed, bool) else math.inf
        by_prompt.setdefault(" ".join(str(meta["prompt"]).split()), []).append((order, sidecar.name, image))
    if not by_prompt:
        raise FileNotFoundError(f"{folder}: no JSON sidecars with a 'prompt' key (set adherence_dir)")
    return {prompt: [image for *_, image in sorted(found)] for prompt, found in by_prompt.items()}


def volumes_for(volumes: dict[str, list[Path]], folder: str | Path, prompt: str, num: int) -> list[Path]:
    """The first ``num`` files of :func:`folder_volumes` for ``prompt``; a one-line error when there are fewer."""
    paths = volumes.get(" ".join(prompt.split()))
    if not paths:
        raise KeyError(f"{folder}: no volumes generated for the prompt {prompt!r}")
    if len(paths) < num:
        raise ValueError(f"{folder}: {len(paths)} volumes for the prompt {prompt!r}, {num} asked for")
    return paths[:num]


def folder_generator(folder: str | Path, check: bool = False) -> Generator:
    """A ``generate`` callable over the volumes of :func:`folder_volumes`: the first ``num`` for the prompt (it
    ignores ``seed``). An unknown prompt or too few volumes raise a one-line error.

    Args:
        folder: the generated volumes with their prompt sidecars.
        check: read the files with :func:`scripts.evaluation.data.read_ct`, refusing a label map or an image not in
            HU (the evaluation command does; off for toy volumes).
    """
    volumes = folder_volumes(folder)

    def generate(prompt: str, num: int, seed: int) -> list[Volume]:
        return [read_ct(path, check) for path in volumes_for(volumes, folder, prompt, num)]

    return generate


def pipeline_generator(
    pipeline: Callable, spacing: Sequence[float], lowres_only: bool = False, conventions: Any = None
) -> Generator:
    """A ``generate`` callable around :class:`scripts.inference.pipeline.MedSynPipeline` (or anything called as
    ``pipeline(prompt, seed) -> PipelineOutput``): sample ``i`` uses seed ``seed + i``.

    Args:
        pipeline: the generation pipeline.
        spacing: voxel size (mm) of the final grid; the low-resolution output is ``LOWRES_FACTOR`` times coarser.
        lowres_only: measure the stage-1 output even when the pipeline has a super-resolution stage.
        conventions: the weights' :class:`~scripts.conventions.ModelConventions` (default this bundle's).
    """
    from scripts.conventions import LOWRES_FACTOR, get_conventions
    from scripts.inference.writer import decode_sample

    conventions = get_conventions(conventions)

    def generate(prompt: str, num: int, seed: int) -> list[Volume]:
        out = []
        for i in range(num):
            sample = pipeline(prompt, seed + i)
            lowres = lowres_only or sample.volume is None
            volume = sample.lowres if lowres else sample.volume
            grid = [float(s) * (LOWRES_FACTOR if lowres else 1) for s in spacing]
            out.append((decode_sample(volume, conventions)["ct"].astype(np.float32), grid))
        return out

    return generate


def study_markdown(results: Sequence[dict]) -> str:
    """The study as a Markdown table: mean ± sd per group, measured / generated volumes per group, test direction
    and p-value (of the measured volumes)."""
    lines = [
        "| pair | measure | finding mean ± sd | negation mean ± sd | measured / generated (finding, negation) | test "
        "| t | p (one-tailed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sign = ">" if r["alternative"] == "greater" else "<"
        lines.append(
            f"| {r['name']} | {r['measure']} | {r['finding']['mean']:.4g} ± {r['finding']['std']:.3g} "
            f"| {r['negation']['mean']:.4g} ± {r['negation']['std']:.3g} | {_counts(r['finding'])}, {_counts(r['negation'])} "
            f"| finding {sign} negation | {r['t']:.3g} | {r['p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def _counts(group: dict) -> str:
    return f"{group['n']}/{group['generated']}"


def study_boxplot(results: Sequence[dict], path: str | Path, overwrite: bool = False) -> Path:
    """One box plot per pair (finding vs negation) in a single PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.data.io import atomic_path

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        groups = [[v for v in r["values"][g] if math.isfinite(v)] for g in ("finding", "negation")]
        ax.boxplot(groups, tick_labels=["finding", "negation"])
        ax.set_title(f"{r['name']}\np = {r['p']:.3g}", fontsize=9)
        ax.set_ylabel(r["measure"], fontsize=8)
    fig.tight_layout()
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
