"""Memorisation audit: is any synthetic volume closer to a training volume than two training volumes are?

For each synthetic volume the nearest training volume is found twice: by Euclidean distance between feature
vectors (e.g. MedicalNet features, :mod:`scripts.evaluation.features`) and by normalised cross-correlation (NCC)
of the CTs resampled to a small common grid. The reference is the closest real-real pair among the training
volumes (smallest feature distance, largest NCC); a synthetic volume closer than that is flagged as a possible
copy. The figure shows the closest synthetic/training pairs side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.conventions import HU_MAX, HU_MIN

THUMB_SIZE = 48  # NCC grid edge: enough for anatomy, small enough for N×M comparisons


def thumbnail(ct_hu: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """CT (HU) clipped to the bundle's window and resampled to ``size``³ by area averaging (float32)."""
    x = torch.as_tensor(np.asarray(ct_hu, dtype=np.float32)).clamp(HU_MIN, HU_MAX)[None, None]
    return F.adaptive_avg_pool3d(x, size)[0, 0].numpy() if x.shape[2:] != (size,) * 3 else x[0, 0].numpy()


def _standardise(thumbs: np.ndarray) -> np.ndarray:
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    flat = flat - flat.mean(1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norm, 1e-12)


def ncc_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Zero-mean normalised cross-correlation between every volume of ``a`` (N, ...) and of ``b`` (M, ...)."""
    return _standardise(a) @ _standardise(b).T


def distance_matrix(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Euclidean distance between every feature vector of ``a`` (N, D) and of ``b`` (M, D)."""
    return torch.cdist(torch.as_tensor(a).double(), torch.as_tensor(b).double()).numpy()


def audit(
    synthetic: Sequence[np.ndarray],
    training: Sequence[np.ndarray],
    synthetic_ids: Sequence[str] | None = None,
    training_ids: Sequence[str] | None = None,
    synthetic_features: np.ndarray | torch.Tensor | None = None,
    training_features: np.ndarray | torch.Tensor | None = None,
    size: int = THUMB_SIZE,
    progress: bool = True,
) -> dict:
    """Nearest training volume of each synthetic one, by features (when given) and by NCC, with flags.

    Args:
        synthetic, training: CT volumes in HU (any shapes: they are resampled to ``size``³ for NCC).
        synthetic_ids, training_ids: names used in the report (default: indices).
        synthetic_features, training_features: (N, D) and (M, D) feature matrices, or None to skip that criterion.
        size: NCC grid edge.
        progress: show a progress bar while resampling.
    Returns:
        ``{"threshold": {"feature_distance", "ncc"}, "closest_real_pair": {...}, "pairs": [...], "flagged": [...]}``;
        each pair entry names the synthetic volume, its nearest training volume by each criterion and whether it
        is flagged (feature distance below, or NCC above, the closest real-real pair).
    """
    if len(training) < 2:
        raise ValueError(f"the audit needs 2 or more training volumes for the real-real threshold, got {len(training)}")
    if not synthetic:
        raise ValueError("the audit needs at least one synthetic volume")
    synthetic_ids = [str(i) for i in (synthetic_ids or range(len(synthetic)))]
    training_ids = [str(i) for i in (training_ids or range(len(training)))]
    thumbs_s = np.stack([thumbnail(v, size) for v in tqdm(synthetic, desc="audit: synthetic", disable=not progress)])
    thumbs_t = np.stack([thumbnail(v, size) for v in tqdm(training, desc="audit: training", disable=not progress)])
    ncc_st = ncc_matrix(thumbs_s, thumbs_t)
    ncc_tt = ncc_matrix(thumbs_t, thumbs_t)
    np.fill_diagonal(ncc_tt, -np.inf)
    i, j = np.unravel_index(np.argmax(ncc_tt), ncc_tt.shape)
    closest_real: dict = {"ncc": {"pair": [training_ids[i], training_ids[j]], "value": float(ncc_tt[i, j])}}
    threshold: dict[str, float | None] = {"ncc": float(ncc_tt[i, j]), "feature_distance": None}
    dist_st = None
    if (synthetic_features is None) != (training_features is None):
        raise ValueError("give features for both the synthetic and the training volumes, or for neither")
    if synthetic_features is not None:
        dist_st = distance_matrix(synthetic_features, training_features)
        dist_tt = distance_matrix(training_features, training_features)
        np.fill_diagonal(dist_tt, np.inf)
        i, j = np.unravel_index(np.argmin(dist_tt), dist_tt.shape)
        closest_real["feature_distance"] = {"pair": [training_ids[i], training_ids[j]], "value": float(dist_tt[i, j])}
        threshold["feature_distance"] = float(dist_tt[i, j])
    pairs = []
    for s, name in enumerate(synthetic_ids):
        t_ncc = int(np.argmax(ncc_st[s]))
        entry: dict = {"synthetic": name, "nearest_by_ncc": training_ids[t_ncc], "ncc": float(ncc_st[s, t_ncc])}
        flagged = entry["ncc"] > threshold["ncc"]
        if dist_st is not None:
            t_feat = int(np.argmin(dist_st[s]))
            entry.update(nearest_by_feature=training_ids[t_feat], feature_distance=float(dist_st[s, t_feat]))
            flagged = flagged or entry["feature_distance"] < threshold["feature_distance"]
        entry["flagged"] = bool(flagged)
        pairs.append(entry)
    pairs.sort(key=lambda e: -e["ncc"])
    return {
        "threshold": threshold,
        "closest_real_pair": closest_real,
        "pairs": pairs,
        "flagged": [e["synthetic"] for e in pairs if e["flagged"]],
        "thumbnails": {"synthetic": dict(zip(synthetic_ids, thumbs_s)), "training": dict(zip(training_ids, thumbs_t))},
    }


def audit_markdown(result: dict, top: int = 10) -> str:
    """The closest pairs as a Markdown table (highest NCC first) and the real-real thresholds."""
    threshold = result["threshold"]
    lines = [
        f"Closest real-real pair: NCC {threshold['ncc']:.4f}"
        + ("" if threshold["feature_distance"] is None else f", feature distance {threshold['feature_distance']:.4g}")
        + f". Flagged: {len(result['flagged'])} of {len(result['pairs'])} synthetic volumes.",
        "",
        "| synthetic | nearest (NCC) | NCC | nearest (features) | feature distance | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for e in result["pairs"][:top]:
        feat = f"{e['feature_distance']:.4g}" if "feature_distance" in e else "—"
        lines.append(
            f"| {e['synthetic']} | {e['nearest_by_ncc']} | {e['ncc']:.4f} | {e.get('nearest_by_feature', '—')} "
            f"| {feat} | {'**yes**' if e['flagged'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def audit_figure(result: dict, path: str | Path, top: int = 4, overwrite: bool = False) -> Path:
    """PNG of the ``top`` closest synthetic/training pairs (by NCC): axial and coronal mid-slices side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.data.io import atomic_path

    pairs = result["pairs"][:top]
    fig, axes = plt.subplots(len(pairs), 4, figsize=(8, 2.1 * len(pairs)), squeeze=False)
    for row, e in zip(axes, pairs):
        thumbs = result["thumbnails"]
        views = [thumbs["synthetic"][e["synthetic"]], thumbs["training"][e["nearest_by_ncc"]]]
        titles = [f"synthetic {e['synthetic']}", f"training {e['nearest_by_ncc']} (NCC {e['ncc']:.3f})"]
        for k, (volume, title) in enumerate(zip(views, titles)):
            # radiological view of the RAS (x, y, z) array: patient's right on the left, anterior / superior on top
            axial = volume[:, :, volume.shape[2] // 2].T[::-1, ::-1]
            coronal = volume[:, volume.shape[1] // 2, :].T[::-1, ::-1]
            for ax, image, label in ((row[2 * k], axial, "axial"), (row[2 * k + 1], coronal, "coronal")):
                ax.imshow(image, cmap="gray", vmin=-1024, vmax=300)
                ax.set_title(f"{title}\n{label}" + (" FLAGGED" if e["flagged"] else ""), fontsize=6)
                ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
