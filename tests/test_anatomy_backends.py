"""Backends without their packages or weights: the calls they build, the clear missing-weights errors, auto choice.

lungmask and TotalSegmentator are never installed here: fake modules stand in for them, and weight folders are
temporary paths, so nothing is ever downloaded.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_fake_totalsegmentator

from scripts.anatomy import backends, lungmask_backend, totalseg_backend
from scripts.anatomy.base import BackendUnavailableError, MissingWeightsError
from scripts.anatomy.lungmask_backend import LungmaskBackend
from scripts.anatomy.totalseg_backend import TaskRun, TotalSegmentatorBackend

_real_find_spec = importlib.util.find_spec


def pretend_installed(monkeypatch, *names: str) -> None:
    """Make ``importlib.util.find_spec`` report the given top-level packages as installed."""

    def find_spec(name, *args, **kwargs):
        if name in names:
            return object()
        return _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture(autouse=True)
def no_real_weights(monkeypatch, tmp_path):
    """Weight lookups point into empty temporary folders unless a test puts files there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    for name in ("TOTALSEG_WEIGHTS_PATH", lungmask_backend.WEIGHTS_ENV, totalseg_backend.PYTHON_ENV):
        monkeypatch.delenv(name, raising=False)


def small_ct(shape=(6, 7, 8)) -> np.ndarray:
    return np.random.default_rng(0).normal(-800, 50, shape).astype(np.float32)


# --- lungmask ----------------------------------------------------------------------------------------------------
def test_lungmask_missing_weights_names_file_url_and_variable(monkeypatch, tmp_path):
    pretend_installed(monkeypatch, "lungmask")
    backend = LungmaskBackend(device="cpu")
    expected = tmp_path / "torch" / "hub" / "checkpoints" / lungmask_backend.WEIGHTS_FILE
    assert backend.missing_weights(["lobe"]) == [expected]
    with pytest.raises(MissingWeightsError) as info:
        backend.segment(small_ct(), (1, 1, 1), ["lobe"])
    message = str(info.value)
    assert str(expected) in message and lungmask_backend.WEIGHTS_URL in message
    assert lungmask_backend.WEIGHTS_ENV in message and "\n" not in message


def test_lungmask_not_installed_says_how_to_install(monkeypatch):
    def find_spec(name, *args, **kwargs):
        return None if name == "lungmask" else _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BackendUnavailableError, match="pip install lungmask"):
        LungmaskBackend().check(["lobe"])


def test_lungmask_call_and_orientation(monkeypatch, tmp_path):
    weights = tmp_path / "ltrc.pth"
    weights.write_bytes(b"not read by the fake")
    calls = {}

    class FakeInferer:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def apply(self, image):
            calls["image"] = image
            # label 1 (left upper lobe) wherever lungmask's x index points to the patient's left half
            out = np.zeros(image.shape, dtype=np.uint8)
            out[:, :, image.shape[2] // 2 :] = 1
            return out

    monkeypatch.setitem(sys.modules, "lungmask", types.SimpleNamespace(LMInferer=FakeInferer))
    pretend_installed(monkeypatch, "lungmask")
    monkeypatch.setenv(lungmask_backend.WEIGHTS_ENV, str(weights))
    ct = small_ct()
    lobes = LungmaskBackend(device="cpu", batch_size=4).segment(ct, (1, 1, 1), ["lobe"])["lobe"]
    assert calls["init"] == {
        "modelname": "LTRCLobes", "modelpath": str(weights), "force_cpu": True, "batch_size": 4, "tqdm_disable": True,
    }  # fmt: skip
    # lungmask sees (z, y, x) with x towards the left and y towards posterior
    np.testing.assert_array_equal(calls["image"], ct[::-1, ::-1, :].transpose(2, 1, 0))
    assert lobes.shape == ct.shape
    # the patient's left is the −x half of a RAS array
    assert lobes[: ct.shape[0] // 2].all() and not lobes[ct.shape[0] - ct.shape[0] // 2 :].any()


# --- TotalSegmentator --------------------------------------------------------------------------------------------
def test_totalseg_weights_dir_follows_its_environment_variables(monkeypatch, tmp_path):
    assert totalseg_backend.weights_dir() == tmp_path / "totalseg" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    assert totalseg_backend.weights_dir() == tmp_path / "w"


def test_totalseg_missing_weights_lists_folders_and_fix(monkeypatch, tmp_path):
    pretend_installed(monkeypatch, "totalsegmentator")
    backend = TotalSegmentatorBackend(device="cpu")
    root = tmp_path / "totalseg" / "nnunet" / "results"
    missing = backend.missing_weights(["airway", "vessel"])
    assert missing == [root / totalseg_backend.DATASETS[258], root / totalseg_backend.DATASETS[298]]
    assert missing[0].name == "Dataset258_lung_vessels_248subj"
    with pytest.raises(MissingWeightsError) as info:
        backend.check(["vessel"])
    message = str(info.value)
    assert "Dataset258_lung_vessels_248subj" in message and "TOTALSEG_WEIGHTS_PATH" in message
    assert "totalseg_download_weights -t lung_vessels" in message and str(root) in message
    lobe_missing = {p.name[:10] for p in backend.missing_weights(["lobe"])}
    assert lobe_missing == {"Dataset291", "Dataset292", "Dataset293", "Dataset294", "Dataset295", "Dataset298"}
    fast = TotalSegmentatorBackend(totalseg_fast=True).missing_weights(["lobe"])
    assert {p.name[:10] for p in fast} == {"Dataset297", "Dataset298"}


def put_weights(root, *ids):
    for dataset in ids:
        folder = root / totalseg_backend.DATASETS[dataset]
        folder.mkdir(parents=True)
        (folder / "plans.json").write_text("{}")


FAKE_CLASS_MAP = {
    "lung_vessels": {1: "lung_vessels", 2: "lung_trachea_bronchia"},
    "total": {10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right",
              13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 51: "heart"},
}  # fmt: skip


def fake_totalsegmentator(calls):
    def totalsegmentator(input, output=None, **kwargs):
        calls.append({"output": output, **kwargs})
        shape = input.shape
        seg = np.zeros(shape, dtype=np.uint8)
        if kwargs["task"] == "lung_vessels":
            seg[: shape[0] // 2] = 1  # vessels on the −x half
            seg[shape[0] // 2 :, 0] = 2  # airway on one row of the +x half
        else:
            seg[:] = 51
            seg[:, :, : shape[2] // 2] = 11  # left lower lobe below, middle lobe above
            seg[:, :, shape[2] // 2 :] = 13
        return nib.Nifti1Image(seg, input.affine)

    return totalsegmentator


def test_totalseg_in_process_calls_and_label_mapping(monkeypatch, tmp_path):
    calls: list[dict] = []
    package = types.ModuleType("totalsegmentator")
    api = types.SimpleNamespace(totalsegmentator=fake_totalsegmentator(calls))
    maps = types.SimpleNamespace(class_map=FAKE_CLASS_MAP)
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setitem(sys.modules, "totalsegmentator.map_to_binary", maps)
    pretend_installed(monkeypatch, "totalsegmentator")
    put_weights(tmp_path / "totalseg" / "nnunet" / "results", 258, 291, 292, 293, 294, 295, 298)
    ct = small_ct()
    masks = TotalSegmentatorBackend(device="cpu").segment(ct, (0.8, 0.8, 1.5), ["lobe", "airway", "vessel"])
    assert [c["task"] for c in calls] == ["lung_vessels", "total"]
    assert all(c["ml"] is True and c["device"] == "cpu" and c["output"] is None for c in calls)
    assert "roi_subset" not in calls[0] and "fast" not in calls[0]
    assert calls[1]["roi_subset"] == list(totalseg_backend.LOBE_CLASSES)
    half = ct.shape[0] // 2
    assert masks["vessel"][:half].all() and not masks["vessel"][half:].any()
    assert masks["airway"][half:, 0].all() and masks["airway"].sum() == (ct.shape[0] - half) * ct.shape[2]
    assert set(np.unique(masks["lobe"][:, :, : ct.shape[2] // 2])) == {2}  # LTRC label of the left lower lobe
    assert set(np.unique(masks["lobe"][:, :, ct.shape[2] // 2 :])) == {4}  # right middle lobe; heart dropped


def test_totalseg_in_a_separate_interpreter(monkeypatch, tmp_path):
    """The separate-environment path runs scripts.anatomy.totalseg_runner with the given python."""
    write_fake_totalsegmentator(
        tmp_path / "fake_env",
        FAKE_CLASS_MAP,
        """
            import json, os
            import nibabel as nib
            import numpy as np

            def totalsegmentator(input, output=None, **kwargs):
                with open(os.environ["FAKE_TS_LOG"], "a") as f:
                    f.write(json.dumps(kwargs) + "\\n")
                seg = np.full(input.shape, 2, dtype=np.uint8)
                return nib.Nifti1Image(seg, input.affine)
            """,
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake_env"))
    monkeypatch.setenv("FAKE_TS_LOG", str(tmp_path / "log.jsonl"))
    put_weights(tmp_path / "totalseg" / "nnunet" / "results", 258, 298)
    backend = TotalSegmentatorBackend(device="cpu", totalseg_python=sys.executable)
    masks = backend.segment(small_ct(), (1, 1, 1), ["airway", "vessel"])
    assert masks["airway"].all() and not masks["vessel"].any()
    logged = (tmp_path / "log.jsonl").read_text().strip().splitlines()
    assert len(logged) == 1 and '"task": "lung_vessels"' in logged[0]
    broken = TotalSegmentatorBackend(totalseg_python=str(tmp_path / "no_such_python"))
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        broken.check(["vessel"])


# --- auto choice -------------------------------------------------------------------------------------------------
def test_auto_uses_classical_without_weights_and_dl_backends_when_ready(monkeypatch, tmp_path):
    pretend_installed(monkeypatch, "lungmask", "totalsegmentator")
    plan, notes = backends.plan_backends("auto")
    assert {s: b.name for s, b in plan.items()} == {"lobe": "classical", "airway": "classical", "vessel": "classical"}
    assert notes == []
    weights = tmp_path / "torch" / "hub" / "checkpoints" / lungmask_backend.WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    put_weights(tmp_path / "totalseg" / "nnunet" / "results", 258, 298)
    plan, _ = backends.plan_backends("auto")
    assert {s: b.name for s, b in plan.items()} == {"lobe": "lungmask", "airway": "totalsegmentator",
                                                    "vessel": "totalsegmentator"}  # fmt: skip
    assert plan["airway"] is plan["vessel"]  # one instance per backend
    plan, _ = backends.plan_backends("auto", overrides={"lobe": "classical"})
    assert plan["lobe"].name == "classical"


def test_named_backend_without_weights_raises_or_falls_back(monkeypatch):
    pretend_installed(monkeypatch, "lungmask")
    with pytest.raises(MissingWeightsError, match="unet_ltrclobes"):
        backends.plan_backends("lungmask")
    plan, notes = backends.plan_backends("lungmask", fallback=True)
    assert plan["lobe"].name == "classical" and len(notes) == 1
    assert notes[0].startswith("lobe: lungmask weights not found") and notes[0].endswith("to classical")
    with pytest.raises(ValueError, match="cannot make"):
        backends.plan_backends("auto", overrides={"airway": "lungmask"})
    with pytest.raises(ValueError, match="unknown backend"):
        backends.plan_backends("nnunet")
    with pytest.raises(ValueError, match="unknown option"):
        backends.plan_backends("classical", options={"classical": {"threshold": 3}})


def test_not_installed_and_no_weights_says_both(monkeypatch):
    def find_spec(name, *args, **kwargs):
        return None if name == "totalsegmentator" else _real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BackendUnavailableError) as info:
        TotalSegmentatorBackend().check(["airway"])
    message = str(info.value)
    assert "not installed" in message and "--totalseg_python" in message
    assert "Dataset258_lung_vessels_248subj" in message and "TOTALSEG_WEIGHTS_PATH" in message


def test_task_runs_are_checked_and_name_their_weights(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="no weight list"):
        TaskRun("liver_vessels", {"liver": {"liver_vessels": 1}})
    with pytest.raises(ValueError, match="only"):
        TaskRun("lung_vessels", {"airway": {"lung_trachea_bronchia": 1}}, roi_subset=("lung_trachea_bronchia",))
    pretend_installed(monkeypatch, "totalsegmentator")
    backend = TotalSegmentatorBackend(device="cpu")
    effusion = TaskRun("pleural_pericard_effusion", {"effusion": {"pleural_effusion": 1}})
    root = tmp_path / "totalseg" / "nnunet" / "results"
    assert backend.missing_run_weights([effusion]) == [root / "Dataset298_TotalSegmentator_total_6mm_1559subj",
                                                       root / "Dataset315_thoraxCT"]  # fmt: skip
    assert "-t pleural_pericard_effusion -t total_fast" in backend.run_weights_fix([effusion])
    lobes = TaskRun("total", {"lobe": totalseg_backend.LOBE_CLASSES}, roi_subset=tuple(totalseg_backend.LOBE_CLASSES))
    assert "-t pleural_pericard_effusion -t total`" in backend.run_weights_fix([effusion, lobes])
    with pytest.raises(MissingWeightsError, match="Dataset315_thoraxCT"):
        backend.run_tasks(small_ct(), (1, 1, 1), [effusion])
    with pytest.raises(ValueError, match="repeat"):
        backend.run_tasks(small_ct(), (1, 1, 1), [effusion, TaskRun("lung_vessels", {"effusion": {"lung_vessels": 1}})])


# --- layer order -------------------------------------------------------------------------------------------------
def test_anatomy_imports_only_the_layers_below_it():
    """scripts/__init__.py: cli → conventions → data / phantom → anatomy → … → evaluation; anatomy never imports
    upwards."""
    allowed = {"anatomy", "cli", "conventions", "data", "phantom"}
    package = Path(backends.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "scripts" and len(parts) > 1:
                    assert parts[1] in allowed, f"{path.name} imports {name}"
