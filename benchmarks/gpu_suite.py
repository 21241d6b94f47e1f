"""End-to-end sampling speed and memory of the paper-size cascade: report → 256³ CT with maps, written to disk.

    python -m benchmarks.gpu_suite --out DIR [--cases fp32_ddim bf16_ddim ...] [--budget_s 480]
    python -m benchmarks.gpu_suite --out DIR --tiny      # the same cases on tiny networks at 32³ (CPU check)

Random weights of the real shapes (``paper`` preset: 716 M + 54 M parameters), batch 1, the official step counts
(50 + 20) unless the case says otherwise, stage 2 on the whole volume (``sr_tile`` None, as the official code).
The text features are a random (1, 192, 768) tensor: encoding a report takes milliseconds and needs the gated
language model. Each case runs twice from model-in-memory (the first run includes CUDA kernel selection); the
reported time is the second run, end to end: both stages, decoding, and writing the four NIfTI volumes. Model
building is timed apart. Peak memory: ``torch.cuda.max_memory_allocated`` per case. Cases run one after another
until ``--budget_s`` is spent; a case that runs out of memory is recorded as such. Results: ``DIR/gpu_suite.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from scripts.conventions import MEDSYN_MONAI
from scripts.diffusion import get_scheduler
from scripts.inference.pipeline import MedSynPipeline
from scripts.inference.writer import SampleWriter
from scripts.networks import build_network

# name: (precision, lowres sampler, lowres steps, sr sampler, sr steps, guidance)
CASES = {
    "fp32_ddim": ("float32", "ddim", 50, "ddim", 20, 1.0),
    "bf16_ddim": ("bfloat16", "ddim", 50, "ddim", 20, 1.0),
    "bf16_ddim_guidance3": ("bfloat16", "ddim", 50, "ddim", 20, 3.0),
    "bf16_dpmpp_17_7": ("bfloat16", "dpmpp_2m", 17, "dpmpp_2m", 7, 1.0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, networks: tuple, device: torch.device, lowres_size: int, context_dim: int, out: Path) -> dict:
    precision, lowres_sampler, lowres_steps, sr_sampler, sr_steps, guidance = CASES[name]
    context = torch.randn(1, 192, context_dim, generator=torch.Generator().manual_seed(0))
    pipeline = MedSynPipeline(
        *networks,
        text_encoder=lambda texts: context.to(device),
        lowres_size=(lowres_size,) * 3,
        lowres_steps=lowres_steps,
        sr_steps=sr_steps,
        guidance_scale=guidance,
        device=device,
        progress=False,
        scheduler=get_scheduler(lowres_sampler),
        sr_scheduler=get_scheduler(sr_sampler),
        precision=precision,
    )
    writer = SampleWriter(out, MEDSYN_MONAI, overwrite=True, png=False)
    affine = torch.eye(4).numpy()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for run in range(2):
        _sync(device)
        start = time.perf_counter()
        output = pipeline("a report", seed=run)
        writer.write(f"{name}_{run}", output.volume, {"prompt": "a report"}, affine)
        _sync(device)
        times.append(time.perf_counter() - start)
    evaluations = (lowres_steps * (2 if guidance not in (0.0, 1.0) else 1), sr_steps)
    return {
        "case": name,
        "precision": precision,
        "samplers": [lowres_sampler, sr_sampler],
        "steps": [lowres_steps, sr_steps],
        "guidance": guidance,
        "network_evaluations": evaluations,
        "first_run_s": round(times[0], 2),
        "seconds": round(times[1], 2),
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_suite.json (e.g. $OUT on the device)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--budget_s", type=float, default=480.0, help="stop starting new cases after this long")
    parser.add_argument("--tiny", action="store_true", help="tiny networks at 32³: a quick check on a CPU")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset, lowres_size = ("tiny", 8) if args.tiny else ("paper", 64)
    build_start = time.perf_counter()
    with torch.device(device):
        torch.manual_seed(0)
        networks = (build_network(preset, "lowres"), build_network(preset, "sr"))
    _sync(device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "preset": preset,
        "parameters": [sum(p.numel() for p in n.parameters()) for n in networks],
        "build_s": round(time.perf_counter() - build_start, 2),
        "cases": [],
    }
    context_dim = networks[0].context_dim if hasattr(networks[0], "context_dim") else 768
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as samples:
        for name in args.cases:
            if time.perf_counter() - started > args.budget_s:
                report["cases"].append({"case": name, "skipped": "time budget spent"})
                continue
            try:
                result = run_case(name, networks, device, lowres_size, context_dim, Path(samples))
            except torch.cuda.OutOfMemoryError as error:
                result = {"case": name, "error": f"out of memory: {str(error).splitlines()[0]}"}
            report["cases"].append(result)
            print(json.dumps(result), flush=True)
            (out / "gpu_suite.json").write_text(json.dumps(report, indent=1) + "\n")  # kept if a later case hangs
    report["total_s"] = round(time.perf_counter() - started, 1)
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
