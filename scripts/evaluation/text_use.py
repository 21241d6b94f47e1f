"""Does a stage-1 network use the report? Its denoising loss on phantom cases that have a finding, given the prompt
that states the finding versus the prompt that negates it.

The adherence study (:mod:`.adherence`) samples N volumes per prompt and measures them; early in training, or with
few samples, its groups are too noisy to show an effect that is there. This probe needs forward passes only: the
same clean cases, times and noises are denoised once per text, so any loss difference comes from the text alone. A
network that reads the finding from its context predicts the case better with the finding's prompt than with the
negation's; one that ignores the text shows no gap. Per pair it reports the mean loss per text (the case's own
report, the finding prompt, the negation prompt, the null text of classifier-free guidance), the relative gap
``(loss_negation - loss_finding) / loss_finding`` and a one-tailed paired t-test of that gap over cases.

The network enters as ``network(x_t, timesteps, context=..., drop_context=...) -> x0`` (a ``MedSynUNet``), the
cases as clean (4, D, H, W) volumes in [-1, 1] on the network's grid.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from scripts.diffusion import ContinuousDDIMScheduler
from scripts.evaluation.adherence import PromptPair

TEXTS = ("own", "finding", "negation", "null")
DEFAULT_TIMES = (
    0.2,
    0.4,
    0.6,
    0.8,
    0.95,
)  # fractions of the diffusion time; the text matters most at mid-to-high noise


@torch.no_grad()
def loss_by_text(
    network: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    contexts: dict[str, torch.Tensor | None],
    times: Sequence[float] = DEFAULT_TIMES,
    noises: int = 2,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Mean x0 MSE per case for each text, over the same times and noises.

    Args:
        network: ``network(x_t, timesteps, context=(B, T, H) or None, drop_context=(B,) bool) -> x̂0``.
        x0: clean cases (B, C, D, H, W) in [-1, 1].
        contexts: text name → token features (B, T, H), or None for the network's null text.
        times: diffusion times in (0, 1] at which every case is noised.
        noises: noise draws per time.
        seed: seed of the noise draws (the same noise for every text).

    Returns:
        text name → (B,) loss per case, averaged over ``len(times) * noises`` noised copies.
    """
    if not times or min(times) <= 0 or max(times) > 1:
        raise ValueError(f"times must be fractions in (0, 1], got {list(times)}")
    if noises < 1:
        raise ValueError(f"noises must be >= 1, got {noises}")
    scheduler = ContinuousDDIMScheduler()
    generator = torch.Generator().manual_seed(seed)
    batch = x0.shape[0]
    totals = {name: torch.zeros(batch) for name in contexts}
    for t in times:
        timesteps = torch.full((batch,), t * scheduler.num_train_timesteps, device=x0.device)
        for _ in range(noises):
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
            x_t = scheduler.add_noise(x0, noise, timesteps)
            for name, context in contexts.items():
                drop = torch.full((batch,), context is None, device=x0.device)
                pred = network(x_t, timesteps, context=context, drop_context=drop)
                totals[name] += ((pred.float() - x0) ** 2).mean(dim=tuple(range(1, x0.ndim))).cpu()
    return {name: total / (len(times) * noises) for name, total in totals.items()}


def gap_test(finding: torch.Tensor, negation: torch.Tensor) -> dict[str, Any]:
    """Relative gap ``(negation - finding) / finding`` per case and its one-tailed t-test (gap > 0)."""
    gap = ((negation - finding) / finding).double()
    if gap.numel() < 2:
        raise ValueError(f"the gap test needs at least 2 cases, got {gap.numel()}")
    if float(gap.std()) == 0.0:
        p = 0.0 if float(gap.mean()) > 0 else 1.0
    else:
        p = float(stats.ttest_1samp(gap.numpy(), 0.0, alternative="greater").pvalue)
    return {"gap": float(gap.mean()), "gap_per_case": [float(g) for g in gap], "p": p}


def phantom_cases(
    findings: str,
    num: int,
    size: int,
    seed: int,
    spacing: Sequence[float],
    grid: int,
    workdir: str | Path,
    conventions: Any = None,
) -> tuple[torch.Tensor, list[str]]:
    """``num`` phantom cases with ``findings``, preprocessed to the stage-1 grid as in training (with the weights'
    conventions, default this bundle's).

    Args:
        workdir: a new or empty folder for the cases' files (one per distinct findings: the phantom writer refuses
            to write over another data set).

    Returns:
        (num, 4, grid/4, grid/4, grid/4) clean volumes and the cases' own reports.
    """
    from scripts.engines import load_split, lowres_transforms
    from scripts.phantom import write_dataset

    datalist = write_dataset(Path(workdir), num, size, seed, findings, val_fraction=0.0)
    items = load_split(datalist, None, "training")
    transform = lowres_transforms(spacing, grid, conventions=conventions)
    volumes = [transform(item)["lowres"].as_tensor() for item in items]
    return torch.stack(volumes), [item["report"] for item in items]


def _findings_key(pair: PromptPair) -> Any:
    """What makes two pairs' phantom cases the same: their parsed findings (a one-line error names a bad spec)."""
    from scripts.phantom.findings import FindingSpec

    try:
        return FindingSpec.parse(pair.phantom_findings)
    except ValueError as err:
        raise ValueError(f"pair {pair.name!r}: phantom_findings: {err}") from None


def text_use_study(
    weights: str | Path,
    pairs: Sequence[PromptPair],
    num: int = 6,
    size: int = 128,
    seed: int = 77,
    times: Sequence[float] = DEFAULT_TIMES,
    noises: int = 2,
    text_encoder: str | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """The probe for every pair that names its ``phantom_findings``, on exported stage-1 weights.

    Args:
        weights: stage-1 weights (``.pt`` + ``.json``); their description gives the grid and the text encoder.
        pairs: prompt pairs; those without ``phantom_findings`` are skipped.
        num: phantom cases per pair.
        size: phantom edge length in voxels (rendered at 320 mm / size, then resampled to the weights' grid).
        seed: phantom seed.
        times, noises: as in :func:`loss_by_text`.
        text_encoder: encoder name or folder; default the one the weights were trained with.
        device: where the network runs.
    """
    from scripts.conventions import conventions_from_description
    from scripts.networks import load_network
    from scripts.text import ReportEncoder

    usable = [pair for pair in pairs if pair.phantom_findings]
    if not usable:
        raise ValueError('no prompt pair names its phantom_findings (e.g. "effusion:bilateral:large")')
    # pairs whose findings parse the same (two phrasings of one report, or "Effusion: bilateral:large") share their
    # cases, made once; parsing here also refuses a bad spec before the network and the encoder load
    keys = [_findings_key(pair) for pair in usable]
    network, info = load_network(weights, "lowres", device)
    data = info.get("data") or {}
    if "spacing" not in data or "size" not in data:
        raise ValueError(f"{weights}: its description has no training grid ('data': spacing and size)")
    conventions = conventions_from_description(info)
    encoder = ReportEncoder.for_weights(
        text_encoder or info.get("text_encoder", "minilm"), info.get("text_encoder_info"), device
    )

    def encoded(texts: list[str]) -> torch.Tensor:
        return encoder.encode(texts).to(device, torch.float32)

    results = []
    cases: dict[Any, tuple[torch.Tensor, list[str]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for pair, key in zip(usable, keys):
            if key not in cases:  # one folder per distinct findings (numbered: the spec text need not be a name)
                folder = Path(workdir) / f"cases_{len(cases)}"
                cases[key] = phantom_cases(
                    pair.phantom_findings, num, size, seed, data["spacing"], data["size"], folder, conventions
                )
            x0, reports = cases[key]
            x0 = x0.to(device)
            contexts = {
                "own": encoded(reports),
                "finding": encoded([pair.finding] * num),
                "negation": encoded([pair.negation] * num),
                "null": None,
            }
            losses = loss_by_text(network, x0, contexts, times, noises, seed)
            results.append(
                {
                    "name": pair.name,
                    "phantom_findings": pair.phantom_findings,
                    "cases": num,
                    "loss": {name: float(loss.mean()) for name, loss in losses.items()},
                    **gap_test(losses["finding"], losses["negation"]),
                }
            )
    return results


def text_use_markdown(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`text_use_study`'s results."""
    lines = [
        "| pair | phantom cases | loss: own report | finding | negation | null text | gap (negation − finding) "
        "/ finding | p (one-tailed, paired) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        loss = r["loss"]
        lines.append(
            f"| {r['name']} | {r['cases']} × {r['phantom_findings']} | {loss['own']:.5f} | {loss['finding']:.5f} | "
            f"{loss['negation']:.5f} | {loss['null']:.5f} | {100 * r['gap']:+.2f} % | {r['p']:.3g} |"
        )
    return "\n".join(lines)
