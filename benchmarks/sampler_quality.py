"""Quality against network evaluations of the samplers and their grids, per stage, on the demo weights (CPU).

    python -m benchmarks.sampler_quality [--stage lowres|sr] [--seeds 0 1] [--steps 5 10 15 20 30 50]
        [--reference 250] [--json FILE] [--plot docs/figures/sampler_quality_stage1.png]

For each seed the stage runs from the same starting noise with every variant at each step count, and with DDIM at
``--reference`` steps (the official uniform grid) as the reference. The variants separate the solver from its grid:
``ddim`` (the official loop), ``ddim_logsnr`` (DDIM on the log-SNR grid), ``dpmpp_2m`` (DPM-Solver++(2M) on its
default log-SNR grid: what ``--sampler_* dpmpp_2m`` runs) and ``dpmpp_2m_uniform`` (on the uniform grid).

Per run: the mean absolute difference from the reference per channel (network units, [-1, 1]) and the Dice of the
decoded lobe (mean over the five lobes), airway and vessel maps against the reference's. The default report of
configs/inference.json, guidance 1 (MedSyn's), the shipped ``models/lowres_small.pt`` and ``models/sr_small.pt``.
Stage 2 (``--stage sr``) is conditioned on the seed's stage-1 result of the official loop (DDIM, 50 steps) and
starts from the seed's own noise, on the middle ``--sr_crop`` (D H W) of the 256³ grid: the whole volume takes
about 35 s per evaluation on a 2-core CPU, and the comparison between samplers needs the same network on the same
input, not the whole volume (``--sr_crop 256 256 256`` runs it whole). A step is one network evaluation (the
sampler returns x̂0 at the last step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from scripts.conventions import CHANNELS, NUM_LOBES
from scripts.diffusion import SuperResolutionDenoiser, ddim_sample_loop, get_scheduler, upsample_nearest
from scripts.inference.workflow import InferenceRunner

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (sampler, grid; None = the sampler's default)
    "ddim": ("ddim", None),
    "ddim_logsnr": ("ddim", "logsnr"),
    "dpmpp_2m": ("dpmpp_2m", None),
    "dpmpp_2m_uniform": ("dpmpp_2m", "uniform"),
}
DEFAULT_STEPS = {"lowres": [5, 10, 15, 20, 30, 50], "sr": [3, 5, 7, 10, 15, 20]}


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


class StageRunner:
    """One stage of the demo cascade from a seed's fixed starting noise, with any scheduler and step count."""

    def __init__(
        self, stage: str, prompt: str, weights_lowres: str, weights_sr: str, sr_crop: tuple[int, int, int]
    ) -> None:
        self.runner = InferenceRunner(
            weights_lowres, weights_sr if stage == "sr" else "", ROOT / "outputs" / "sq", device="cpu", progress=False
        )
        self.pipeline, self.stage, self.prompt = self.runner.pipeline, stage, prompt
        self._seed: int | None = None
        self.sr_crop = sr_crop

    def scheduler(self, variant: str):
        sampler, grid = VARIANTS[variant]
        return get_scheduler(sampler, self.runner.conventions, **({"timestep_spacing": grid} if grid else {}))

    def set_seed(self, seed: int) -> None:
        """Stage 1: the pipeline draws the seed's noise itself. Stage 2: the official loop's stage-1 result for the
        seed conditions it, and the seed's generator draws its noise."""
        self._seed = seed
        if self.stage == "sr":
            pipeline = self.pipeline
            pipeline.scheduler, pipeline.lowres_steps = get_scheduler("ddim", self.runner.conventions), 50
            saved, pipeline.sr_network = pipeline.sr_network, None
            lowres = pipeline(self.prompt, seed).lowres
            pipeline.sr_network = saved
            noise = torch.randn((1, 4, *pipeline.size), generator=torch.Generator().manual_seed(seed + 10_000))
            crop = (slice(None), slice(None)) + tuple(
                slice((full - size) // 2, (full - size) // 2 + size) for full, size in zip(pipeline.size, self.sr_crop)
            )
            self._denoise = SuperResolutionDenoiser(saved, upsample_nearest(lowres[None])[crop])
            self._noise = noise[crop]

    def __call__(self, variant: str, steps: int) -> torch.Tensor:
        """The stage's result, (4, D, H, W) in network units."""
        if self.stage == "lowres":
            self.pipeline.scheduler, self.pipeline.lowres_steps = self.scheduler(variant), steps
            return self.pipeline(self.prompt, self._seed).lowres
        with torch.inference_mode():
            return ddim_sample_loop(self._denoise, self._noise, steps, self.scheduler(variant), progress=False)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("lowres", "sr"), default="lowres")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, nargs="+")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--reference", type=int, default=250)
    parser.add_argument("--weights_lowres", default=str(ROOT / "models" / "lowres_small.pt"))
    parser.add_argument("--weights_sr", default=str(ROOT / "models" / "sr_small.pt"))
    parser.add_argument("--sr_crop", type=int, nargs=3, default=[32, 128, 128])
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    steps_list = args.steps or DEFAULT_STEPS[args.stage]
    prompt = json.loads((ROOT / "configs" / "inference.json").read_text())["default_prompt"]
    stage = StageRunner(args.stage, prompt, args.weights_lowres, args.weights_sr, tuple(args.sr_crop))
    results: dict = {"stage": args.stage, "prompt": prompt, "reference_steps": args.reference, "runs": []}
    if args.stage == "sr":
        results["sr_crop"] = args.sr_crop
    for seed in args.seeds:
        stage.set_seed(seed)
        reference = stage("ddim", args.reference)
        for variant in args.variants:
            for steps in steps_list:
                start = time.perf_counter()
                sample = stage(variant, steps)
                row = {"seed": seed, "variant": variant, "steps": steps, "seconds": time.perf_counter() - start}
                row.update(compare(sample, reference, stage.runner.conventions))
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for variant in args.variants:
        for steps in steps_list:
            rows = [r for r in results["runs"] if r["variant"] == variant and r["steps"] == steps]
            summary[f"{variant}@{steps}"] = {
                k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k[:4] in ("mae_", "dice")
            }
    results["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        grid = "64³" if args.stage == "lowres" else f"{'×'.join(map(str, args.sr_crop))} of the 256³ grid"
        _plot(
            summary,
            args.variants,
            steps_list,
            args.reference,
            f"stage {1 if args.stage == 'lowres' else 2}, {grid}",
            args.plot,
        )
    return 0


def _plot(summary: dict, variants: list[str], steps: list[int], reference: int, label: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for variant, style in zip(variants, ("o-", "o--", "s-", "s--")):
        mae = [summary[f"{variant}@{n}"]["mae_ct"] for n in steps]
        dice = [summary[f"{variant}@{n}"]["dice_lobe"] for n in steps]
        axes[0].plot(steps, mae, style, label=variant)
        axes[1].plot(steps, dice, style, label=variant)
    axes[0].set(xlabel=f"network evaluations ({label})", ylabel="CT mean |difference| (network units)", yscale="log")
    axes[1].set(xlabel=f"network evaluations ({label})", ylabel="lobe Dice (mean of five lobes)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"{label.capitalize()} against a {reference}-step DDIM reference (demo weights, same noise)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
