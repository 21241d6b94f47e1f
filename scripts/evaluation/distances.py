"""Distribution distances between synthetic and real feature sets: FID and MMD (MONAI's metrics), 2.5D FID.

Inputs are feature matrices (N, D) from :mod:`scripts.evaluation.features`; smaller is closer for every
distance. FID is MONAI's ``FIDMetric``; when there are fewer samples than feature dimensions (the usual case
with 2048-d features) both sets are first expressed in an orthonormal basis of the span of their centred
samples, which leaves the Fréchet distance unchanged (it depends only on the means and covariances, and both
live in that span) and turns a 2048×2048 matrix square root (~45 s on 2 cores) into an (N1+N2)-sized one.
MMD is MONAI's ``MMDMetric`` (unbiased, linear kernel), which needs equal set sizes: the larger set is
subsampled with a fixed seed and the result says so.
"""

from __future__ import annotations

import warnings

import torch
from monai.metrics import FIDMetric, MMDMetric
from scipy.linalg import LinAlgWarning

from scripts.evaluation.features import PLANES


def _check(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: expected two (N, D) feature matrices with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"{name}: needs at least 2 samples per set, got {len(a)} and {len(b)}")
    return a, b


def span_basis(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets in an orthonormal basis of span{a - mean(b), b - mean(b)}; means and covariances keep their
    Fréchet distance (translation and rotation invariance, and both covariances vanish off the span)."""
    centre = b.mean(0)
    stacked = torch.cat([a, b]) - centre
    q, _ = torch.linalg.qr(stacked.T, mode="reduced")  # (D, N1+N2)
    return (a - centre) @ q, (b - centre) @ q


def fid(synthetic: torch.Tensor, real: torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (MONAI ``FIDMetric``)."""
    synthetic, real = _check(synthetic, real, "FID")
    if len(synthetic) + len(real) < synthetic.shape[1]:
        synthetic, real = span_basis(synthetic, real)
    with warnings.catch_warnings():  # covariances from fewer samples than dimensions are singular by construction
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(FIDMetric()(synthetic, real))


def mmd(synthetic: torch.Tensor, real: torch.Tensor, seed: int = 0) -> dict[str, float | int]:
    """Unbiased linear-kernel MMD (MONAI ``MMDMetric``); ``{"mmd", "n"}`` with ``n`` the samples used per set."""
    synthetic, real = _check(synthetic, real, "MMD")
    n = min(len(synthetic), len(real))
    generator = torch.Generator().manual_seed(seed)
    if len(synthetic) > n:
        synthetic = synthetic[torch.randperm(len(synthetic), generator=generator)[:n]]
    if len(real) > n:
        real = real[torch.randperm(len(real), generator=generator)[:n]]
    return {"mmd": float(MMDMetric()(real, synthetic)), "n": n}


def fid_2p5d(synthetic: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> dict[str, float]:
    """MAISI's 2.5D FID: one FID per plane (slices as samples) and their mean, ``{"xy", "yz", "zx", "mean"}``."""
    out = {plane: fid(synthetic[plane], real[plane]) for plane in PLANES}
    out["mean"] = sum(out.values()) / len(PLANES)
    return out
