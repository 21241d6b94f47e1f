"""Quality against network evaluations of the samplers, stage 1, on the demo weights (CPU).

    python -m benchmarks.sampler_quality [--seeds 0 1] [--steps 5 10 15 20 30 50] [--reference 250]
        [--json FILE] [--plot docs/figures/sampler_quality_stage1.png]

For each seed the low-res stage runs from the same starting noise with DDIM and with DPM-Solver++(2M)
(``dpmpp_2m``) at each step count, and with DDIM at ``--reference`` steps as the reference. Per run: the mean
absolute difference from the reference per channel (network units, [-1, 1]) and the Dice of the decoded lobe
(mean over the five lobes), airway and vessel maps against the reference's. The default report of
configs/inference.json, guidance 1 (MedSyn's), the shipped ``models/lowres_small.pt``. A step is one network
evaluation here (the bundle's sampler returns x̂0 at the last step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from scripts.conventions import CHANNELS, NUM_LOBES
from scripts.diffusion import get_scheduler
from scripts.inference.workflow import InferenceRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("ddim", "dpmpp_2m")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def compare(sample: torch.Tensor, reference: torch.Tensor, conventions) -> dict[str, float]:
    """Per-channel mean absolute difference and Dice of the decoded maps, (4, D, H, W) network-unit volumes."""
    out = {f"mae_{name}": float((sample[i] - reference[i]).abs().mean()) for i, name in enumerate(CHANNELS)}
    lobe, ref_lobe = (conventions.decode("lobe", v[1]).numpy() for v in (sample, reference))
    out["dice_lobe"] = float(np.mean([_dice(lobe == k, ref_lobe == k) for k in range(1, NUM_LOBES + 1)]))
    for i, name in ((2, "airway"), (3, "vessel")):
        out[f"dice_{name}"] = _dice(*(conventions.decode(name, v[i]).numpy() > 0 for v in (sample, reference)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 15, 20, 30, 50])
    parser.add_argument("--reference", type=int, default=250)
    parser.add_argument("--weights", default=str(ROOT / "models" / "lowres_small.pt"))
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    prompt = json.loads((ROOT / "configs" / "inference.json").read_text())["default_prompt"]
    runner = InferenceRunner(args.weights, "", ROOT / "outputs" / "sampler_quality", device="cpu", progress=False)
    pipeline = runner.pipeline
    results: dict = {"prompt": prompt, "reference_steps": args.reference, "runs": []}
    for seed in args.seeds:
        pipeline.scheduler, pipeline.lowres_steps = get_scheduler("ddim", runner.conventions), args.reference
        reference = pipeline(prompt, seed).lowres
        for sampler in SAMPLERS:
            for steps in args.steps:
                pipeline.scheduler, pipeline.lowres_steps = get_scheduler(sampler, runner.conventions), steps
                start = time.perf_counter()
                sample = pipeline(prompt, seed).lowres
                row = {"seed": seed, "sampler": sampler, "steps": steps, "seconds": time.perf_counter() - start}
                row.update(compare(sample, reference, runner.conventions))
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for sampler in SAMPLERS:
        for steps in args.steps:
            rows = [r for r in results["runs"] if r["sampler"] == sampler and r["steps"] == steps]
            summary[f"{sampler}@{steps}"] = {
                k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k[:4] in ("mae_", "dice")
            }
    results["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        _plot(summary, args.steps, args.reference, args.plot)
    return 0


def _plot(summary: dict, steps: list[int], reference: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sampler, style in zip(SAMPLERS, ("o-", "s-")):
        mae = [summary[f"{sampler}@{n}"]["mae_ct"] for n in steps]
        dice = [np.mean([summary[f"{sampler}@{n}"][f"dice_{m}"] for m in ("lobe", "airway", "vessel")]) for n in steps]
        axes[0].plot(steps, mae, style, label=sampler)
        axes[1].plot(steps, dice, style, label=sampler)
    axes[0].set(xlabel="network evaluations (stage 1)", ylabel="CT mean |difference| (network units)", yscale="log")
    axes[1].set(xlabel="network evaluations (stage 1)", ylabel="mean Dice (lobe, airway, vessel)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"Stage 1 against a {reference}-step DDIM reference (demo weights, same starting noise)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
