"""Speed and memory of the paper-size cascade on a GPU: report → 256³ CT with maps on disk, and training steps.

    python -m benchmarks.gpu_suite --out DIR [--cases bf16_ddim ...] [--budget_s 480]
    python -m benchmarks.gpu_suite --out DIR --tiny      # the same cases on tiny networks at small sizes (CPU check)

Random weights of the real shapes (``paper`` preset: 716 M + 54 M parameters), batch 1. Sampling cases run the
official step counts (50 + 20) unless the case says otherwise, stage 2 on the whole volume (as the official code)
unless the case tiles it. The text features are a random (1, 192, 768) tensor: encoding a report takes milliseconds
and needs the gated language model. Each sampling case runs twice from model-in-memory (the first run includes CUDA
kernel selection, and compilation where the case compiles); the reported time is the second run, end to end: both
stages, decoding, and writing the four NIfTI volumes (the write alone is reported too). Model building is timed
apart. Training cases time forward + backward + AdamW step under bf16 autocast (the median of the steps after
the first two). Peak memory: ``torch.cuda.max_memory_allocated`` per case. The shares the cases separate: bf16
(``fp32_ddim`` vs ``bf16_ddim``), the sampler (``bf16_dpmpp_17_7``), batched guidance (``bf16_ddim_guidance3`` vs
``bf16_ddim_guidance3_sequential``), fused attention (``bf16_ddim_math_attention``: SDPA held to its plain math
kernel), whole-volume stage 2 (``bf16_ddim_tiled``) and ``torch.compile`` (``bf16_ddim_compiled``). Cases run in
the order given until ``--budget_s`` is spent; a case that runs out of memory is recorded as such. Results:
``DIR/gpu_suite.json``, rewritten after every case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from scripts.conventions import MEDSYN_MONAI
from scripts.diffusion import LowResPrepareBatch, SuperResolutionPrepareBatch, get_scheduler
from scripts.inference.pipeline import MedSynPipeline
from scripts.inference.writer import SampleWriter
from scripts.networks import build_network


@dataclass(frozen=True)
class SamplingCase:
    """One report → 256³ sample: precision, the sampler and steps of each stage, guidance and what else differs."""

    precision: str = "bfloat16"
    samplers: tuple[str, str] = ("ddim", "ddim")
    steps: tuple[int, int] = (50, 20)
    guidance: float = 1.0
    batch_guidance: bool = True
    sr_tile: tuple[int, int, int] | None = None
    math_attention: bool = False
    compile: bool = False


@dataclass(frozen=True)
class TrainingCase:
    """Training steps of one stage at batch 1 under bf16 autocast, on a (D, H, W) input (a crop for stage 2)."""

    stage: str
    size: tuple[int, int, int]
    checkpointing: bool = False
    steps: int = 5


SAMPLING_CASES = {
    "bf16_ddim": SamplingCase(),
    "bf16_dpmpp_17_7": SamplingCase(samplers=("dpmpp_2m", "dpmpp_2m"), steps=(17, 7)),
    "bf16_ddim_guidance3": SamplingCase(guidance=3.0),
    "fp32_ddim": SamplingCase(precision="float32"),
    "bf16_ddim_guidance3_sequential": SamplingCase(guidance=3.0, batch_guidance=False),
    "bf16_ddim_tiled": SamplingCase(sr_tile=(64, -1, -1)),
    "bf16_ddim_math_attention": SamplingCase(math_attention=True),
    "bf16_ddim_compiled": SamplingCase(compile=True),
}
TRAINING_CASES = {  # stage 2 on the official crop: whole depth, 72 × 72 in-plane (src/train_super_res.py:915)
    "train_lowres_bf16": TrainingCase("lowres", (64, 64, 64)),
    "train_lowres_bf16_checkpointed": TrainingCase("lowres", (64, 64, 64), checkpointing=True),
    "train_sr_bf16": TrainingCase("sr", (256, 72, 72)),
}
CASES = [*SAMPLING_CASES, *TRAINING_CASES]  # the default order: the figures the targets name first
# --tiny: training inputs (sampling: 8³ then 32³). Not 8³ for stage 1: torch 2.13's CPU bf16 backward of the
# (1, 4, 4)-kernel in-plane convolutions aborts the process (double free) on 2 × 2 slices at depth 8.
TINY_SIZES = {"lowres": (8, 16, 16), "sr": (8, 16, 16)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_gb(measure, device: torch.device) -> float | None:
    """``measure(device)`` (a ``torch.cuda`` memory counter) in GiB, None off the GPU. Cases report the peak and
    what other cases' networks held when they started (``memory_allocated`` then; part of the peak)."""
    return round(measure(device) / 2**30, 2) if device.type == "cuda" else None


def run_sampling_case(
    name: str, networks: tuple, device: torch.device, lowres_size: int, context_dim: int, out: Path
) -> dict:
    case = SAMPLING_CASES[name]
    context = torch.randn(1, 192, context_dim, generator=torch.Generator().manual_seed(0))
    lowres, sr = networks
    if case.compile:
        lowres, sr = torch.compile(lowres), torch.compile(sr)
    pipeline = MedSynPipeline(
        lowres,
        sr,
        text_encoder=lambda texts: context.to(device),
        lowres_size=(lowres_size,) * 3,
        lowres_steps=case.steps[0],
        sr_steps=case.steps[1],
        guidance_scale=case.guidance,
        sr_roi_size=case.sr_tile,
        device=device,
        progress=False,
        scheduler=get_scheduler(case.samplers[0]),
        sr_scheduler=get_scheduler(case.samplers[1]),
        precision=case.precision,
        batch_guidance=case.batch_guidance,
    )
    writer = SampleWriter(out, MEDSYN_MONAI, overwrite=True, png=False)
    affine = torch.eye(4).numpy()
    attention = sdpa_kernel(SDPBackend.MATH) if case.math_attention else contextlib.nullcontext()
    times, write_s = [], 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    held = _gpu_gb(torch.cuda.memory_allocated, device)
    with attention:
        for run in range(2):
            _sync(device)
            start = time.perf_counter()
            output = pipeline("a report", seed=run)
            written = time.perf_counter()
            writer.write(f"{name}_{run}", output.volume, {"prompt": "a report"}, affine)
            write_s = time.perf_counter() - written
            _sync(device)
            times.append(time.perf_counter() - start)
    guided = case.guidance not in (0.0, 1.0)
    return {
        "case": name,
        **asdict(case),
        "network_evaluations": [case.steps[0] * (2 if guided else 1), case.steps[1]],
        "first_run_s": round(times[0], 2),
        "seconds": round(times[1], 2),
        "write_s": round(write_s, 2),
        "peak_gpu_memory_gb": _gpu_gb(torch.cuda.max_memory_allocated, device),
        "held_before_gb": held,
    }


def run_training_case(name: str, preset: str, device: torch.device, context_dim: int, tiny: bool) -> dict:
    case = TRAINING_CASES[name]
    size = TINY_SIZES[case.stage] if tiny else case.size
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    held = _gpu_gb(torch.cuda.memory_allocated, device)
    with torch.device(device):
        torch.manual_seed(0)
        network = build_network(preset, case.stage, use_checkpointing=case.checkpointing).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.01)
    batch = {"image": torch.rand(1, 4, *size, device=device) * 2 - 1}
    if case.stage == "lowres":
        batch["context"] = torch.randn(1, 192, context_dim, device=device)
        prepare = LowResPrepareBatch(generator=0)
    else:
        prepare = SuperResolutionPrepareBatch(generator=0)
    times = []
    for _ in range(case.steps):
        _sync(device)
        start = time.perf_counter()
        inputs, target, args, kwargs = prepare(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(network(inputs, *args, **kwargs).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[2:] or times)
    return {
        "case": name,
        **asdict(case),
        "size": list(size),
        "step_s": round(step_s, 3),
        "volumes_per_s": round(1 / step_s, 2),
        "peak_gpu_memory_gb": _gpu_gb(torch.cuda.max_memory_allocated, device),
        "held_before_gb": held,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_suite.json (e.g. $OUT on the device)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--budget_s", type=float, default=480.0, help="stop starting new cases after this long")
    parser.add_argument("--tiny", action="store_true", help="tiny networks at small sizes: a quick check on a CPU")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset, lowres_size = ("tiny", TINY_SIZES["lowres"][0]) if args.tiny else ("paper", 64)
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
                if name in SAMPLING_CASES:
                    result = run_sampling_case(name, networks, device, lowres_size, context_dim, Path(samples))
                else:
                    result = run_training_case(name, preset, device, context_dim, args.tiny)
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
