"""Time and memory of one training step and one sampling step: our low-res network vs MONAI's DiffusionModelUNet.

    python -m benchmarks.bench_networks [--quick] [--sizes 32 64] [--threads N] [--json FILE]

    python -m benchmarks.bench_networks --paper [--threads N] [--memory_limit_gb 20] [--json FILE]

Comparison networks (batch 1, 4 channels, text of 192 × 384 tokens, float32), at matched parameter counts
(~7.4-8.0 M):
  ours            MedSynUNet, preset "small" lowres with width 16 (attention only in the bottleneck)
  ours_checkpointed  the same with gradient checkpointing (use_checkpointing=True)
  monai_attn_all  monai DiffusionModelUNet (16, 32, 48, 96), self+cross attention at every level
  monai_attn_last the same with attention at the last level only
``--paper`` measures the full-size ``paper`` preset instead (text 192 × 768): the low-res network's training
step at 64³ (``paper_lowres``, also at 32³, and ``paper_lowres_checkpointed``) and the super-resolution network's
sampling step at 256³, on the whole volume (``paper_sr``, also at 128³) and through the inference's tiling
(``paper_sr_tiled``: 64-slice slabs, overlap 0.25, as ``sr_tile`` in configs/inference.json).
Each (network, size) runs in a fresh subprocess so the peak resident memory (VmHWM of /proc/self/status) is
that case's own; on CUDA the peak is torch.cuda.max_memory_allocated. On CPU the subprocess's address space is
capped (``--memory_limit_gb``) so a case that does not fit fails alone instead of waking the kernel's OOM killer.
A training step is forward + MSE + backward (no optimizer: AdamW adds 8 bytes per parameter), a sampling step a
forward pass under torch.inference_mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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
# the paper preset: (network, size); one step each, a training step at 64³ is minutes on a CPU. The low-res
# training step also runs at 32³ and the whole-volume super-resolution step at 128³: activations grow with the
# voxels, so the smaller size bounds the larger one's need (activations × 8) when it does not fit under the cap.
PAPER_CASES = (
    ("paper_lowres", 32),
    ("paper_lowres", 64),
    ("paper_lowres_checkpointed", 64),
    ("paper_sr", 128),
    ("paper_sr_tiled", 256),
    ("paper_sr", 256),
)
PAPER_STEPS = {"paper_lowres": ("train",), "paper_lowres_checkpointed": ("train",), "paper_sr": ("sample",)}
PAPER_SR_TILE = (64, -1, -1)  # configs/inference.json sr_tile
MONAI_CHANNELS = (16, 32, 48, 96)


def build(name: str) -> torch.nn.Module:
    """One of :data:`NETWORKS` or the networks of :data:`PAPER_CASES`, randomly initialised."""
    from scripts.networks import build_network

    if name in ("ours", "ours_checkpointed"):
        return build_network("small", "lowres", width=16, use_checkpointing=name == "ours_checkpointed")
    if name.startswith("paper_lowres"):
        return build_network("paper", "lowres", use_checkpointing=name.endswith("_checkpointed"))
    if name == "paper_sr":
        return build_network("paper", "sr")
    if name == "paper_sr_tiled":
        from scripts.inference.tiling import SlidingWindowNetwork

        return SlidingWindowNetwork(build_network("paper", "sr"), roi_size=PAPER_SR_TILE, overlap=0.25)
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


def example_inputs(
    net: torch.nn.Module, shape: tuple[int, ...], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, timesteps, text)`` at batch 1 for ``net`` (a tiled wrapper is read through to its denoiser):
    its input channels, and text of its width, none without text (MONAI's network: our text width)."""
    spec = getattr(net, "network", net)  # SlidingWindowNetwork keeps the denoiser in ``network``
    x = torch.randn(1, getattr(spec, "in_channels", CHANNELS), *shape, device=device)
    text_dim = getattr(spec, "context_dim", TEXT_DIM)
    text = None if text_dim is None else torch.randn(1, TEXT_TOKENS, text_dim, device=device)
    return x, torch.tensor([500.0], device=device), text


def forward_gflop(name: str, size: int) -> float:
    """Forward FLOPs (GFLOP, multiply-add = 2) of one step at batch 1, counted on the meta device: no memory, no
    time, the same on every machine (convolutions, matrix products and attention; normalisations not counted).
    A tiled network counts its tiles (MONAI's tile grid for the roi size and overlap), overlap included."""
    from monai.data.utils import dense_patch_slices
    from torch.utils.flop_counter import FlopCounterMode

    from scripts.inference.tiling import SlidingWindowNetwork

    with torch.device("meta"):
        net = build(name)
    shape, tiles = (size,) * 3, 1
    if isinstance(net, SlidingWindowNetwork):
        roi = tuple(size if r == -1 else r for r in net.roi_size)
        interval = tuple(max(int(r * (1 - net.overlap)), 1) if r < size else size for r in roi)
        shape, tiles, net = roi, len(dense_patch_slices((size,) * 3, roi, interval)), net.network
    with torch.device("meta"):
        x, t, text = example_inputs(net, shape)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x, t, text)
    return round(tiles * counter.get_total_flops() / 1e9, 1)


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


def run_case(
    name: str, size: int, device_name: str, warmup: int, reps: int, steps: tuple[str, ...] = ("sample", "train")
) -> dict:
    """Measure one network at one size in this process (call in a fresh process for a clean memory peak).

    ``steps``: which of ``sample`` and ``train`` to measure; a step not measured is reported as None.
    """
    device = torch.device(device_name)
    torch.manual_seed(0)
    net = build(name).to(device)
    x, t, text = example_inputs(net, (size,) * 3, device)
    target = torch.randn(1, CHANNELS, *x.shape[2:], device=device)  # every network here predicts the 4 channels

    def sample() -> None:
        with torch.inference_mode():
            net(x, t, text)

    def train() -> None:
        net.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x, t, text), target).backward()

    base = _peak_bytes(device) if device.type == "cpu" else 0
    measured: dict[str, tuple[float, int] | None] = {"sample": None, "train": None}
    for step_name, step in (("sample", sample), ("train", train)):  # sampling first: its peak is below training's
        if step_name not in steps:
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        seconds = _timed(step, device, reps)
        measured[step_name] = (seconds, _peak_bytes(device))
    result = {
        "network": name,
        "size": size,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in net.parameters()),
        "baseline_gb": round(base / 2**30, 3),  # CPU: resident memory before the first step (model, inputs)
    }
    for step_name, value in measured.items():
        result[f"{step_name}_step_s"] = None if value is None else round(value[0], 3)
        result[f"{step_name}_peak_gb"] = None if value is None else round(value[1] / 2**30, 3)
    return result


def _address_space_cap(gigabytes: float) -> Callable[[], None]:
    limit = int(gigabytes * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _measure(args: argparse.Namespace, name: str, size: int, device: str) -> dict:
    """One case in a fresh process, with its forward FLOPs (counted here, on the meta device)."""
    return {**_child(args, name, size, device), "gflop": forward_gflop(name, size)}


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
    # CUDA reserves far more address space than it uses: cap CPU cases only
    cap = _address_space_cap(args.memory_limit_gb) if device == "cpu" and args.memory_limit_gb else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"network": name, "size": size, "device": device, "error": f"over {args.timeout} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"network": name, "size": size, "device": device, "error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict]) -> str:
    """Markdown table; "Δ" columns are the peak minus the memory held before the first step (model, inputs)."""
    head = (
        "| network | params | size | device | forward GFLOP | train step (s) | train peak / Δ (GB) | sample step (s) "
        "| sample peak / Δ (GB) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['network']} | | {r['size']}³ | {r['device']} | {r.get('gflop', '')} | {r['error']} | | | |"
            )
            continue
        cells = []
        for step_name in ("train", "sample"):
            seconds, peak = r[f"{step_name}_step_s"], r[f"{step_name}_peak_gb"]
            cells += ["-", "-"] if seconds is None else [f"{seconds}", f"{peak} / {peak - r['baseline_gb']:.2f}"]
        lines.append(
            f"| {r['network']} | {r['params'] / 1e6:.2f}M | {r['size']}³ | {r['device']} | {r.get('gflop', '')} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="no warm-up, one repetition, attention-at-every-level MONAI only at 32³ (< 2 min on CPU)",
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="the paper preset instead: low-res training step at 64³, super-resolution sampling step at 256³",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    paper_names = list(dict.fromkeys(name for name, _ in PAPER_CASES))
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=list(NETWORKS) + paper_names,
        help="the networks to run (default: all of the comparison, or all paper cases with --paper)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per (network, size) case")
    parser.add_argument(
        "--memory_limit_gb",
        type=float,
        default=20.0,
        help="address-space cap of each CPU case (0: none); a case over it is reported as not fitting",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--case", nargs=3, metavar=("NETWORK", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.case:  # child process: one case, one JSON line
        name, size, device = args.case
        steps = PAPER_STEPS.get(name.removesuffix("_tiled"), ("sample", "train"))
        print(json.dumps(run_case(name, int(size), device, args.warmup, args.reps, steps)))
        return 0

    if args.quick or args.paper:
        args.warmup, args.reps = 0, 1
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        if args.paper:
            for name, size in PAPER_CASES:
                if args.networks and name not in args.networks:
                    continue
                results.append(_measure(args, name, size, device))
                print(_table(results[-1:]).splitlines()[-1], flush=True)
            continue
        for size in args.sizes:
            for name in args.networks or NETWORKS:
                if args.quick and device == "cpu" and name == "monai_attn_all" and size > 32:
                    # tens of seconds per step at 32³ already; 64³ is minutes on two cores
                    results.append(
                        {
                            "network": name,
                            "size": size,
                            "device": device,
                            "gflop": forward_gflop(name, size),
                            "error": "skipped by --quick",
                        }
                    )
                    continue
                results.append(_measure(args, name, size, device))
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
