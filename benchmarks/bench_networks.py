"""Time and memory of one training step and one sampling step: our low-res network vs MONAI's DiffusionModelUNet.

    python -m benchmarks.bench_networks [--quick] [--sizes 32 64] [--threads N] [--json FILE]

Networks (batch 1, 4 channels, text of 192 × 384 tokens, float32), at matched parameter counts (~7.4-8.0 M):
  ours            MedSynUNet, preset "small" lowres with width 16 (attention only in the bottleneck)
  ours_checkpointed  the same with gradient checkpointing (use_checkpointing=True)
  monai_attn_all  monai DiffusionModelUNet (16, 32, 48, 96), self+cross attention at every level
  monai_attn_last the same with attention at the last level only
Each (network, size) runs in a fresh subprocess so the peak resident memory (VmHWM of /proc/self/status) is
that case's own; on CUDA the peak is torch.cuda.max_memory_allocated. A training step is forward + MSE + backward,
a sampling step a forward pass under torch.inference_mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]  # children run `-m benchmarks.bench_networks` from the repository root
TEXT_TOKENS, TEXT_DIM, CHANNELS = 192, 384, 4
NETWORKS = ("ours", "ours_checkpointed", "monai_attn_all", "monai_attn_last")
MONAI_CHANNELS = (16, 32, 48, 96)


def build(name: str) -> torch.nn.Module:
    """One of :data:`NETWORKS`, randomly initialised."""
    if name in ("ours", "ours_checkpointed"):
        from scripts.networks import build_network

        return build_network("small", "lowres", width=16, use_checkpointing=name == "ours_checkpointed")
    from monai.networks.nets import DiffusionModelUNet

    levels = len(MONAI_CHANNELS)
    attention = (True,) * levels if name == "monai_attn_all" else (False,) * (levels - 1) + (True,)
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        num_res_blocks=2,
        channels=MONAI_CHANNELS,
        attention_levels=attention,
        norm_num_groups=8,
        num_head_channels=[min(c, 32) for c in MONAI_CHANNELS],
        with_conditioning=True,
        cross_attention_dim=TEXT_DIM,
        use_flash_attention=True,
    )


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _timed(step: Callable[[], None], device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(name: str, size: int, device_name: str, warmup: int, reps: int) -> dict:
    """Measure one network at one size in this process (call in a fresh process for a clean memory peak)."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    net = build(name).to(device)
    x = torch.randn(1, CHANNELS, size, size, size, device=device)
    t = torch.tensor([500.0], device=device)
    text = torch.randn(1, TEXT_TOKENS, TEXT_DIM, device=device)
    target = torch.randn_like(x)

    def sample() -> None:
        with torch.inference_mode():
            net(x, t, text)

    def train() -> None:
        net.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x, t, text), target).backward()

    base = _peak_bytes(device) if device.type == "cpu" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        sample()
    sample_s = _timed(sample, device, reps)
    sample_peak = _peak_bytes(device)  # sampling first: its peak is below training's, so each is read in turn
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train()
    train_s = _timed(train, device, reps)
    train_peak = _peak_bytes(device)
    return {
        "network": name,
        "size": size,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in net.parameters()),
        "train_step_s": round(train_s, 3),
        "sample_step_s": round(sample_s, 3),
        "train_peak_gb": round(train_peak / 2**30, 3),
        "sample_peak_gb": round(sample_peak / 2**30, 3),
        "baseline_gb": round(base / 2**30, 3),  # CPU: resident memory before the first step (model, inputs)
    }


def _child(args: argparse.Namespace, name: str, size: int, device: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_networks",
        "--case",
        name,
        str(size),
        device,
        "--warmup",
        str(args.warmup),
        "--reps",
        str(args.reps),
        "--threads",
        str(args.threads),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"network": name, "size": size, "device": device, "error": f"over {args.timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"network": name, "size": size, "device": device, "error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict]) -> str:
    """Markdown table; "Δ" columns are the peak minus the memory held before the first step (model, inputs)."""
    head = (
        "| network | params | size | device | train step (s) | train peak / Δ (GB) | sample step (s) "
        "| sample peak / Δ (GB) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['network']} | | {r['size']}³ | {r['device']} | {r['error']} | | | |")
            continue
        base = r["baseline_gb"]
        lines.append(
            f"| {r['network']} | {r['params'] / 1e6:.2f}M | {r['size']}³ | {r['device']} | {r['train_step_s']} | "
            f"{r['train_peak_gb']} / {r['train_peak_gb'] - base:.2f} | {r['sample_step_s']} | "
            f"{r['sample_peak_gb']} / {r['sample_peak_gb'] - base:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="no warm-up, one repetition, attention-at-every-level MONAI only at 32³ (< 2 min on CPU)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per (network, size) case")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--case", nargs=3, metavar=("NETWORK", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.case:  # child process: one case, one JSON line
        name, size, device = args.case
        print(json.dumps(run_case(name, int(size), device, args.warmup, args.reps)))
        return 0

    if args.quick:
        args.warmup, args.reps = 0, 1
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for size in args.sizes:
            for name in args.networks:
                if args.quick and device == "cpu" and name == "monai_attn_all" and size > 32:
                    # SPEC §12: tens of seconds per step at 32³ already; 64³ is minutes on two cores
                    results.append({"network": name, "size": size, "device": device, "error": "skipped by --quick"})
                    continue
                results.append(_child(args, name, size, device))
                print(_table(results[-1:]).splitlines()[-1], flush=True)
    report = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python -m benchmarks.bench_networks " + " ".join(sys.argv[1:] if argv is None else argv),
        "results": results,
    }
    print()
    print(_table(results))
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
