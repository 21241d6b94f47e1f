"""Feature networks for distribution distances: MedicalNet 3D ResNet-50 and the 2D ResNet-50 of the 2.5D FID.

Each maps a volume (or a slice) to one global-average-pooled 2048-d vector. Weights never download: they come from
a file given by path or from an entry of ``large_files.yml``; a missing file raises :class:`MissingWeightsError` with
one line saying where to put it. Random weights are only built when asked for explicitly (``random_weights=True``,
used by the tests).

- 3D: MedicalNet ResNet-50 (Med3D, 23 data sets). MedicalNet's forward uses a stride-2 stem and, in layers 3 and 4,
  stride 1 with dilation 2 and 4; ``dilated=True`` (default) sets MONAI's network up the same way so that the
  official weights compute the official function. ``dilated=False`` keeps MONAI's strided layers (same weights).
  ``monai.networks.nets.resnet50`` without the classification layer.
- 2D: RadImageNet's ResNet-50 (Mei et al. 2022), the network of MAISI's 2.5D FID and the VLM3D challenge's, in
  the layout of its PyTorch port (Warvito/radimagenet-models, ``RadImageNet-ResNet50_notop.pth``, loaded by
  ``torch.hub`` in MAISI's ``compute_fid_2-5d_ct.py``): Keras's ResNet-50, whose convolutions all have a bias,
  whose batch norms use eps 1.001e-5 and whose bottlenecks stride in their first 1 x 1 convolution
  (:class:`RadImageNetResNet50`). Features are layer 4 averaged over the slice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from monai.networks.nets import ResNet, resnet50
from torch import nn
from tqdm import tqdm

from scripts.conventions import HU_MAX, HU_MIN
from scripts.networks.weights import read_state_file

ROOT = Path(__file__).resolve().parents[2]
LARGE_FILES = ROOT / "large_files.yml"

# large_files.yml entry names and the default place of each file when the entry is absent
WEIGHT_ENTRIES = {
    "medicalnet_resnet50": "models/medicalnet/resnet_50_23dataset.pth",
    "resnet50_2d": "models/resnet50_2d/resnet50_2d.pth",
    "ct_clip": "models/ct_clip/CT-CLIP_v2.pt",  # scripts.evaluation.ctclip
    "cxr_bert_specialized": "models/cxr-bert/config.json",  # its text encoder's configuration and vocabulary
}
# keys present in the weight files that the feature networks do not use (segmentation / classification heads)
IGNORED_PREFIXES = ("conv_seg.", "fc.")
PLANES = ("xy", "yz", "zx")
# ImageNet channel means in the BGR order RadImageNet/MAISI feed their 2D ResNet-50
BGR_MEAN = (0.406, 0.456, 0.485)
KERAS_BN_EPS = 1.001e-5


class MissingWeightsError(FileNotFoundError):
    """A weights file the evaluation needs is not on this machine."""


def _entries(large_files: Path) -> list[dict]:
    if not large_files.is_file():
        return []
    content = yaml.safe_load(large_files.read_text()) or {}
    return list(content.get("large_files") or [])


def resolve_weights(name: str, path: str | Path | None = None, large_files: str | Path | None = None) -> Path:
    """Find the weights file of ``name`` (a key of :data:`WEIGHT_ENTRIES`).

    Args:
        name: ``medicalnet_resnet50`` or ``resnet50_2d``.
        path: explicit file; when given it must exist.
        large_files: a ``large_files.yml`` (default: the bundle's); an entry whose ``name`` equals ``name``
            gives the path (relative to the yml's folder) and, when it has ``hash_val``, the expected hash.
    Raises:
        MissingWeightsError: the file is absent; the message names the file and both ways to provide it.
    """
    if name not in WEIGHT_ENTRIES:
        raise ValueError(f"unknown weights {name!r}; expected one of {sorted(WEIGHT_ENTRIES)}")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MissingWeightsError(f"{name} weights not found at {path}: pass the path of an existing file")
        return path
    large_files = Path(large_files) if large_files is not None else LARGE_FILES
    entry = next((e for e in _entries(large_files) if e.get("name") == name), None)
    target = large_files.parent / (entry["path"] if entry else WEIGHT_ENTRIES[name])
    if not target.is_file():
        raise MissingWeightsError(
            f"{name} weights not found at {target}: put the file there, or pass its path "
            f"(--{name}_weights; in the bundle, --weights#{name}), or add a '{name}' entry to {large_files}"
        )
    if entry and entry.get("hash_val") is not None:
        _check_hash(target, str(entry["hash_val"]), str(entry.get("hash_type", "sha256")))
    return target


def _check_hash(path: Path, expected: str, hash_type: str) -> None:
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest().lower() != expected.lower():
        raise ValueError(f"{path}: {hash_type} {digest.hexdigest()} does not match large_files.yml ({expected})")


def load_state_dict(model: torch.nn.Module, path: str | Path) -> None:
    """Load a ResNet state dict file strictly: ``module.`` prefixes stripped, heads ignored, nothing else missing.

    Accepts a plain state dict or a checkpoint holding one under ``state_dict`` (MedicalNet's layout).
    """
    path = Path(path)
    state = read_state_file(path)  # one line naming a truncated or damaged file
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match the network ({len(missing)} missing keys, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} tensors have the wrong shape, e.g. {bad[0]} {tuple(state[bad[0]].shape)}")
    model.load_state_dict(state, strict=True)


def _dilate_like_medicalnet(model: ResNet) -> None:
    """Turn layers 3 and 4 into MedicalNet's stride-1 dilated layers (dilation 2 and 4); weights are unchanged."""
    for layer, dilation in ((model.layer3, 2), (model.layer4, 4)):
        for block in layer:
            block.conv2.stride = (1,) * 3
            block.conv2.dilation = (dilation,) * 3
            block.conv2.padding = (dilation,) * 3
            if block.downsample is not None:
                block.downsample[0].stride = (1,) * 3


class _KerasBottleneck(nn.Module):
    """Keras's ResNet-50 bottleneck: 1 x 1 (strided) → 3 x 3 → 1 x 1 convolutions with biases, projection shortcut
    in the first block of a stage."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride)
        self.bn1 = nn.BatchNorm2d(width, eps=KERAS_BN_EPS)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width, eps=KERAS_BN_EPS)
        self.conv3 = nn.Conv2d(width, out, 1)
        self.bn3 = nn.BatchNorm2d(out, eps=KERAS_BN_EPS)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride=stride), nn.BatchNorm2d(out, eps=KERAS_BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class RadImageNetResNet50(nn.Module):
    """RadImageNet's ResNet-50 (Keras layout, no classifier): (N, 3, H, W) BGR slices → (N, 2048) features, layer 4
    averaged over the slice. Its state dict has the 371 keys of ``RadImageNet-ResNet50_notop.pth``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64, eps=KERAS_BN_EPS)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            layer = []
            for block in range(blocks):
                layer.append(_KerasBottleneck(channels, width, stride if block == 0 else 1))
                channels = width * _KerasBottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


def _pooled_resnet50(spatial_dims: int, in_channels: int) -> ResNet:
    """MONAI's ResNet-50 in MedicalNet's layout (stride-2 stem, type-B shortcuts, no downsample bias), ending at the
    global average pool (2048-d features, no classifier)."""
    return resnet50(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        feed_forward=False,
        shortcut_type="B",
        bias_downsample=False,
    )


def medicalnet_resnet50(
    weights: str | Path | None = None,
    large_files: str | Path | None = None,
    random_weights: bool = False,
    dilated: bool = True,
) -> ResNet:
    """The 3D ResNet-50 feature network (1 input channel, 2048-d global-average-pooled output), in eval mode.

    Args:
        weights: MedicalNet ``resnet_50*.pth``; when None it is looked up with :func:`resolve_weights`.
        large_files: ``large_files.yml`` to look the weights up in.
        random_weights: build with random weights and read no file (tests only: distances are then meaningless).
        dilated: MedicalNet's dilated layers 3-4 (see the module docstring).
    """
    path = None if random_weights else resolve_weights("medicalnet_resnet50", weights, large_files)  # fail fast
    model = _pooled_resnet50(spatial_dims=3, in_channels=1)
    if dilated:
        _dilate_like_medicalnet(model)
    if path is not None:
        load_state_dict(model, path)
    return model.eval()


def resnet50_2d(
    weights: str | Path | None = None, large_files: str | Path | None = None, random_weights: bool = False
) -> RadImageNetResNet50:
    """The 2D ResNet-50 of the 2.5D FID (RadImageNet's; 3 input channels, 2048-d pooled output), in eval mode.

    Args:
        weights: ``RadImageNet-ResNet50_notop.pth`` (the PyTorch port's state dict); when None it is looked up with
            :func:`resolve_weights`.
        large_files: ``large_files.yml`` to look the weights up in.
        random_weights: build with random weights and read no file (tests only).
    """
    path = None if random_weights else resolve_weights("resnet50_2d", weights, large_files)  # fail fast
    model = RadImageNetResNet50()
    if path is not None:
        load_state_dict(model, path)
    return model.eval()


def preprocess_3d(ct_hu: np.ndarray, size: int | None = None) -> torch.Tensor:
    """CT in HU → (1, 1, X, Y, Z) float tensor: clipped to the bundle's HU window, z-scored per volume
    (MedicalNet's intensity normalisation), optionally resized to ``size``³ (trilinear)."""
    x = torch.as_tensor(np.asarray(ct_hu, dtype=np.float32)).clamp(HU_MIN, HU_MAX)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    x = x[None, None]
    if size is not None and tuple(x.shape[2:]) != (size,) * 3:
        x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
    return x


@torch.inference_mode()
def features_3d(
    volumes: Iterable[np.ndarray], model: torch.nn.Module, size: int | None = None, progress: bool = True
) -> torch.Tensor:
    """One 2048-d feature per CT volume (HU), as an (N, 2048) float64 tensor."""
    device = next(model.parameters()).device
    bar = tqdm(volumes, desc="3D features", disable=not progress)
    out = [model(preprocess_3d(v, size).to(device)).double().cpu() for v in bar]
    if not out:
        raise ValueError("features_3d: no volumes given")
    return torch.cat(out)


def slices_2p5d(
    ct_hu: np.ndarray, plane: str, step: int = 1, window: tuple[float, float] = (-1000.0, 1000.0)
) -> torch.Tensor:
    """Every ``step``-th slice of a volume indexed (x, y, z) in one plane, as (S, 3, H, W) network input.

    ``xy`` slices are axial (fixed z), ``yz`` sagittal (fixed x), ``zx`` coronal (fixed y). Intensities are
    clipped to ``window``, scaled to [0, 1], repeated to three channels and the BGR ImageNet means subtracted.
    """
    axis = {"xy": 2, "yz": 0, "zx": 1}.get(plane)
    if axis is None:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")
    low, high = window
    x = torch.as_tensor(np.asarray(ct_hu, dtype=np.float32)).clamp(low, high).sub(low).div(high - low)
    x = x.movedim(axis, 0)[::step]
    x = x[:, None].repeat(1, 3, 1, 1)
    return x - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)


@torch.inference_mode()
def features_2p5d(
    volumes: Iterable[np.ndarray],
    model: torch.nn.Module,
    step: int = 1,
    batch_size: int = 32,
    window: tuple[float, float] = (-1000.0, 1000.0),
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """2D ResNet-50 features of slices in three planes: ``{plane: (num_slices_total, 2048)}`` float64.

    Each slice is one sample (MAISI's 2.5D protocol); ``step`` keeps every step-th slice to save time.
    """
    out: dict[str, list[torch.Tensor]] = {p: [] for p in PLANES}
    device = next(model.parameters()).device
    for volume in tqdm(volumes, desc="2.5D features", disable=not progress):
        for plane in PLANES:
            slices = slices_2p5d(volume, plane, step, window)
            for start in range(0, len(slices), batch_size):
                out[plane].append(model(slices[start : start + batch_size].to(device)).double().cpu())
    if not out["xy"]:
        raise ValueError("features_2p5d: no volumes given")
    return {p: torch.cat(v) for p, v in out.items()}
