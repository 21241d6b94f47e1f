"""Small helpers for ``configs/multi_gpu_train.json`` (torchrun, one process per GPU, or gloo processes on CPU)."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (selected as the current device), else the CPU."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's when one is set up, else torchrun's ``RANK`` and
    ``WORLD_SIZE`` (set before any group exists), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def wait_for_all_ranks() -> None:
    """A barrier across the processes torchrun started (the process group is set up on first use); nothing in a
    single process."""
    _, world = process_rank()
    if world < 2:
        return
    if not dist.is_initialized():
        dist.init_process_group(default_backend())
    dist.barrier()


def is_rank_zero() -> bool:
    """True in a single process and on rank 0 of a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def wrap_ddp(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around a network already on ``device`` (device_ids only for CUDA)."""
    device_ids = [device] if torch.device(device).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def check_replicas_agree(network: torch.nn.Module, atol: float = 0.0) -> float:
    """Check that every rank holds the same weights; returns the largest difference to rank 0's.

    Raises:
        RuntimeError: when a parameter differs by more than ``atol`` on some rank (a broken DDP setup).
    """
    network = getattr(network, "module", network)
    worst = torch.zeros((), dtype=torch.float64)
    for param in network.parameters():
        reference = param.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (param.detach() - reference).abs().max().double().cpu())
    worst = worst.to(next(network.parameters()).device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    value = float(worst)
    if value > atol:
        raise RuntimeError(f"weights differ between ranks by up to {value:.3g} after training: check the DDP setup")
    logger.info(f"rank {dist.get_rank()}: weights identical on all {dist.get_world_size()} ranks (max diff {value})")
    return value


__all__ = [
    "check_replicas_agree",
    "default_backend",
    "is_rank_zero",
    "local_device",
    "process_rank",
    "wait_for_all_ranks",
    "wrap_ddp",
]
