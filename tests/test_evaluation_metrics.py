"""Feature networks and distribution distances: weight loading, clear errors, and the metrics' properties.

The networks run with random weights here (no MedicalNet or ResNet-50 file can be downloaded on this machine), so
only the properties are checked: a set against itself is at distance ~0, and sets farther apart by construction
are farther apart by the metric.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric

from scripts.evaluation import distances, features


def _volumes(n: int, mix: float, seed: int, size: int = 32) -> list[np.ndarray]:
    """``n`` random CT-like volumes: smooth blobs blended with ``mix`` of a fine texture (0 = none)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        smooth = ndimage.gaussian_filter(rng.standard_normal((size,) * 3), 3.0)
        fine = rng.standard_normal((size,) * 3)
        volume = (1 - mix) * smooth / smooth.std() + mix * fine
        out.append((volume * 300.0 - 400.0).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def net3d():
    torch.manual_seed(0)
    return features.medicalnet_resnet50(random_weights=True)


@pytest.fixture(scope="module")
def net2d():
    torch.manual_seed(0)
    return features.resnet50_2d(random_weights=True)


def test_fid_in_the_span_basis_equals_monai_fid_on_full_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 64, generator=g, dtype=torch.float64)
    b = torch.randn(12, 64, generator=g, dtype=torch.float64) * 1.3 + 0.2
    full = float(FIDMetric()(a, b))
    assert distances.fid(a, b) == pytest.approx(full, rel=1e-6)
    # and on more dimensions than samples, the reduction is what makes it fast; the value is still MONAI's
    a = torch.randn(6, 300, generator=g, dtype=torch.float64)
    b = torch.randn(7, 300, generator=g, dtype=torch.float64) + 0.1
    assert distances.fid(a, b) == pytest.approx(float(FIDMetric()(a, b)), rel=1e-4)


def test_mmd_matches_monai_and_subsamples_to_equal_sizes():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 16, generator=g, dtype=torch.float64)
    b = torch.randn(11, 16, generator=g, dtype=torch.float64) + 1.0
    result = distances.mmd(a, b)
    assert result["n"] == 8
    close = distances.mmd(a, torch.randn(8, 16, generator=g, dtype=torch.float64))
    assert result["mmd"] > 10 * abs(close["mmd"])


def test_3d_features_distances_grow_with_the_shift(net3d):
    base = features.features_3d(_volumes(4, 0.0, seed=1, size=24), net3d, progress=False)
    same = features.features_3d(_volumes(4, 0.0, seed=2, size=24), net3d, progress=False)
    near = features.features_3d(_volumes(4, 0.3, seed=3, size=24), net3d, progress=False)
    far = features.features_3d(_volumes(4, 0.9, seed=4, size=24), net3d, progress=False)
    assert base.shape == (4, 2048)
    assert abs(distances.fid(base, base)) < 1e-6 * distances.fid(base, far)
    assert distances.fid(base, same) < distances.fid(base, near) < distances.fid(base, far)
    assert distances.mmd(base, same)["mmd"] < distances.mmd(base, near)["mmd"] < distances.mmd(base, far)["mmd"]


def test_2p5d_fid_has_three_planes_and_grows_with_the_shift(net2d):
    kwargs = dict(step=8, progress=False)
    base = features.features_2p5d(_volumes(2, 0.0, seed=5, size=24), net2d, **kwargs)
    far = features.features_2p5d(_volumes(2, 0.9, seed=6, size=24), net2d, **kwargs)
    assert {k: tuple(v.shape) for k, v in base.items()} == {p: (6, 2048) for p in features.PLANES}
    self_fid = distances.fid_2p5d(base, base)
    far_fid = distances.fid_2p5d(base, far)
    assert set(far_fid) == {"xy", "yz", "zx", "mean"}
    assert far_fid["mean"] == pytest.approx(np.mean([far_fid[p] for p in features.PLANES]))
    assert all(abs(self_fid[p]) < 1e-6 * far_fid[p] for p in features.PLANES)


def test_slices_follow_the_planes():
    volume = np.zeros((32, 24, 16), dtype=np.float32)
    assert features.slices_2p5d(volume, "xy").shape == (16, 3, 32, 24)
    assert features.slices_2p5d(volume, "yz").shape == (32, 3, 24, 16)
    assert features.slices_2p5d(volume, "zx", step=4).shape == (6, 3, 32, 16)
    with pytest.raises(ValueError, match="unknown plane"):
        features.slices_2p5d(volume, "ab")


def test_missing_weights_give_one_line_naming_the_file_and_the_fixes(tmp_path):
    yml = tmp_path / "large_files.yml"
    yml.write_text("large_files: []\n")
    with pytest.raises(features.MissingWeightsError) as err:
        features.medicalnet_resnet50(large_files=yml)
    message = str(err.value)
    assert "\n" not in message
    assert "resnet_50_23dataset.pth" in message and "large_files.yml" in message and "medicalnet_resnet50" in message
    with pytest.raises(features.MissingWeightsError, match="no_such.pth"):
        features.resnet50_2d(weights=tmp_path / "no_such.pth")


def test_medicalnet_checkpoint_loads_strictly_with_prefixes_and_head(tmp_path, net3d):
    state = {f"module.{k}": v.clone() for k, v in net3d.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 2)  # MedicalNet's segmentation head: ignored
    path = tmp_path / "resnet_50.pth"
    torch.save({"state_dict": state}, path)
    # through large_files.yml, with its hash checked
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yml = tmp_path / "large_files.yml"
    yml.write_text(f"large_files:\n  - name: medicalnet_resnet50\n    path: resnet_50.pth\n    hash_val: {digest}\n")
    loaded = features.medicalnet_resnet50(large_files=yml)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), net3d(x))
    del state["module.layer4.2.conv3.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="1 missing keys"):
        features.medicalnet_resnet50(weights=path)
    yml.write_text('large_files:\n  - name: medicalnet_resnet50\n    path: resnet_50.pth\n    hash_val: "00"\n')
    with pytest.raises(ValueError, match="does not match large_files.yml"):
        features.medicalnet_resnet50(large_files=yml)


def test_dilated_network_keeps_medicalnet_resolution(net3d):
    assert net3d.layer3[0].conv2.dilation == (2, 2, 2) and net3d.layer4[0].conv2.dilation == (4, 4, 4)
    assert net3d.layer4[0].conv2.stride == (1, 1, 1) and net3d.layer4[0].downsample[0].stride == (1, 1, 1)
    with torch.inference_mode():
        x = torch.randn(1, 1, 32, 32, 32)
        stem = net3d.maxpool(net3d.act(net3d.bn1(net3d.conv1(x))))
        assert net3d.layer4(net3d.layer3(net3d.layer2(net3d.layer1(stem)))).shape[2:] == (4, 4, 4)


def test_2d_network_is_radimagenet_resnet50_in_its_pytorch_port_layout(tmp_path, net2d):
    """RadImageNet-ResNet50_notop.pth (Warvito/radimagenet-models): 371 tensors, biased convolutions, the stride in
    each stage's first 1 x 1 convolution, a projection shortcut in layer 1; features are layer 4 averaged."""
    state = net2d.state_dict()
    assert len(state) == 371
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "conv1.bias": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.bias": (256,),
        "layer2.0.conv1.weight": (128, 256, 1, 1),
        "layer3.5.conv3.bias": (1024,),
        "layer4.2.bn3.running_var": (2048,),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert net2d.layer2[0].conv1.stride == (2, 2) and net2d.layer2[0].conv2.stride == (1, 1)
    assert net2d.bn1.eps == pytest.approx(1.001e-5)
    assert not any(k.startswith(("fc.", "avgpool")) for k in state)
    torch.save(state, tmp_path / "RadImageNet-ResNet50_notop.pth")
    loaded = features.resnet50_2d(weights=tmp_path / "RadImageNet-ResNet50_notop.pth")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net2d(x))
        layer4 = net2d.layer4(net2d.layer3(net2d.layer2(net2d.layer1(net2d.maxpool(net2d.bn1(net2d.conv1(x)).relu())))))
    assert loaded(x).shape == (2, 2048)
    torch.testing.assert_close(net2d(x), layer4.mean(dim=(2, 3)))
