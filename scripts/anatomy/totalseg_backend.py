"""TotalSegmentator (Wasserthal et al. 2023) as a backend: task ``lung_vessels`` for vessels and airway, and
optionally its ``total`` task for the five lobes.

Optional dependency, best kept in its own environment (it replaces torch with a CUDA build unless pinned and
installs a torchvision that breaks ``transformers`` beside CPU torch)::

    python -m venv ~/totalseg-env
    ~/totalseg-env/bin/pip install TotalSegmentator==2.18.0 torch==2.13.0

then pass ``--totalseg_python ~/totalseg-env/bin/python`` (or set ``MEDSYN_TOTALSEG_PYTHON``): the backend runs
:mod:`scripts.anatomy.totalseg_runner` with that interpreter. When ``totalsegmentator`` is importable in the
bundle's own environment it is called in-process instead.

Any TotalSegmentator task can be run the same way: :class:`TaskRun` names a task and the masks to make from its
classes, and :meth:`TotalSegmentatorBackend.run_tasks` runs a list of them (in-process or in the separate
interpreter) after checking their weights. The mask backend uses it for lobes, airway and vessels; the evaluation's
anatomy measures (:mod:`scripts.evaluation.anatomy_measures`) for lungs per side, heart, airway and pleural effusion.

TotalSegmentator downloads weights at first use, which fails offline; this wrapper checks the weight folders
first, in TotalSegmentator's own place: ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``,
else ``~/.totalsegmentator/nnunet/results``. Needed folders (nnU-Net datasets, :data:`TASK_DATASETS`):

- vessels and airway (task ``lung_vessels``): ``Dataset258_lung_vessels_248subj`` and, for the lung crop it
  runs first, ``Dataset298_TotalSegmentator_total_6mm_1559subj``;
- lobes, heart (task ``total``, a subset of classes): ``Dataset291`` … ``Dataset295`` (the five 1.5 mm parts)
  and ``Dataset298`` for the crop; with ``totalseg_fast`` ``Dataset297_TotalSegmentator_total_3mm_1559subj`` and
  ``Dataset298`` instead;
- pleural effusion (task ``pleural_pericard_effusion``): ``Dataset315_thoraxCT`` and ``Dataset298`` for the crop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from scripts.anatomy.base import Backend, BackendUnavailableError, register_backend
from scripts.data.io import ras_affine

PYTHON_ENV = "MEDSYN_TOTALSEG_PYTHON"
VESSEL_TASK = "lung_vessels"
LOBE_TASK = "total"
EFFUSION_TASK = "pleural_pericard_effusion"
DATASETS = {
    258: "Dataset258_lung_vessels_248subj",
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
    315: "Dataset315_thoraxCT",
}
# nnU-Net datasets each task needs: its own model(s) and the 6 mm total model (298) it crops with first;
# "total" with totalseg_fast uses the 3 mm model (297) instead of the five parts
TASK_DATASETS = {
    VESSEL_TASK: (258, 298),
    LOBE_TASK: (291, 292, 293, 294, 295, 298),
    EFFUSION_TASK: (315, 298),
}
FAST_TOTAL_DATASETS = (297, 298)
# the `totalseg_download_weights -t` task that fetches each dataset
DOWNLOAD_TASK = {258: VESSEL_TASK, 315: EFFUSION_TASK, 297: "total_fast", 298: "total_fast"}
DOWNLOAD_TASK.update({d: "total" for d in (291, 292, 293, 294, 295)})
# TotalSegmentator class names → the bundle's labels (LTRCLobes order for lobes)
LOBE_CLASSES = {
    "lung_upper_lobe_left": 1,
    "lung_lower_lobe_left": 2,
    "lung_upper_lobe_right": 3,
    "lung_middle_lobe_right": 4,
    "lung_lower_lobe_right": 5,
}
VESSEL_CLASSES = {"vessel": {"lung_vessels": 1}, "airway": {"lung_trachea_bronchia": 1}}


def weights_dir() -> Path:
    """Where TotalSegmentator looks for its nnU-Net weight folders (same rules as TotalSegmentator's config)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if os.environ.get("TOTALSEG_HOME_DIR"):
        home = Path(os.environ["TOTALSEG_HOME_DIR"])
    else:
        user_home = Path.home()
        home = (Path("/tmp") if str(user_home) == "/" else user_home) / ".totalsegmentator"
    return home / "nnunet" / "results"


@dataclass(frozen=True)
class TaskRun:
    """One TotalSegmentator run and the masks made from its output.

    Args:
        task: a TotalSegmentator task with known weights (a key of :data:`TASK_DATASETS`).
        spec: mask name → {TotalSegmentator class name → label in that mask}, e.g.
            ``{"airway": {"lung_trachea_bronchia": 1}}``; several classes may share a label (lobes → a lung side).
        fast: TotalSegmentator's ``fast`` option (task ``total`` only: the 3 mm model).
        roi_subset: classes to predict (task ``total`` only); None for all.
    """

    task: str
    spec: Mapping[str, Mapping[str, int]]
    fast: bool = False
    roi_subset: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_DATASETS:
            raise ValueError(f"TotalSegmentator task {self.task!r} has no weight list; known: {sorted(TASK_DATASETS)}")
        if (self.fast or self.roi_subset) and self.task != LOBE_TASK:
            raise ValueError(
                f"fast and roi_subset apply to TotalSegmentator task {LOBE_TASK!r} only, not {self.task!r}"
            )

    def datasets(self) -> tuple[int, ...]:
        """nnU-Net dataset ids this run needs."""
        return FAST_TOTAL_DATASETS if self.fast else TASK_DATASETS[self.task]


def required_datasets(structures: Sequence[str], fast: bool = False) -> list[int]:
    """nnU-Net dataset ids needed to make the mask-backend ``structures`` (lobe, airway, vessel)."""
    return sorted({d for run in structure_runs(structures, fast) for d in run.datasets()})


def structure_runs(structures: Sequence[str], fast: bool = False) -> list[TaskRun]:
    """The TotalSegmentator runs that make the training masks ``structures``: one ``lung_vessels`` run for vessels
    and airway, one ``total`` run (the five lobe classes only) for lobes."""
    runs = []
    vessel_spec = {s: VESSEL_CLASSES[s] for s in structures if s in VESSEL_CLASSES}
    if vessel_spec:
        runs.append(TaskRun(VESSEL_TASK, vessel_spec))
    if "lobe" in structures:
        runs.append(TaskRun(LOBE_TASK, {"lobe": LOBE_CLASSES}, fast, tuple(LOBE_CLASSES)))
    return runs


@register_backend
class TotalSegmentatorBackend(Backend):
    """Vessels and airway by TotalSegmentator's ``lung_vessels`` task; lobes by its ``total`` task; any other
    masks from any task with known weights by :meth:`run_tasks`.

    Options:
        totalseg_python: Python interpreter of a separate environment holding TotalSegmentator (else
            ``MEDSYN_TOTALSEG_PYTHON``; else TotalSegmentator must be importable here).
        totalseg_fast: lobes from the 3 mm ``total`` model (faster, coarser).
        timeout_s: limit for one TotalSegmentator run in a separate interpreter (default 3600 s).
    """

    name = "totalsegmentator"
    structures = ("lobe", "airway", "vessel")
    option_names = ("totalseg_python", "totalseg_fast", "timeout_s")

    def python(self) -> str | None:
        """The separate interpreter to run TotalSegmentator with, or None to call it in-process."""
        return self.options.get("totalseg_python") or os.environ.get(PYTHON_ENV) or None

    def is_installed(self) -> bool:
        python = self.python()
        if python:
            return Path(python).exists()
        return importlib.util.find_spec("totalsegmentator") is not None

    def install_hint(self) -> str:
        python = self.python()
        if python:
            return f"the interpreter {python} (--totalseg_python / {PYTHON_ENV}) does not exist"
        return (
            "install TotalSegmentator==2.18.0 with torch==2.13.0 in its own environment and pass "
            f"--totalseg_python ENV/bin/python (or set {PYTHON_ENV}); see docs/data_preparation.md"
        )

    def _fast(self) -> bool:
        return bool(self.options.get("totalseg_fast", False))

    def missing_weights(self, structures: Sequence[str]) -> list[Path]:
        return self.missing_run_weights(structure_runs(structures, self._fast()))

    def weights_fix(self, structures: Sequence[str]) -> str:
        return self.run_weights_fix(structure_runs(structures, self._fast()))

    def missing_run_weights(self, runs: Sequence[TaskRun]) -> list[Path]:
        """Weight folders the ``runs`` need that are missing or empty."""
        root = weights_dir()
        folders = [root / DATASETS[d] for d in sorted({d for run in runs for d in run.datasets()})]
        return [f for f in folders if not f.is_dir() or not any(f.iterdir())]

    def run_weights_fix(self, runs: Sequence[TaskRun]) -> str:
        """Where to get and put the weights of ``runs`` (one sentence)."""
        needed = {d for run in runs for d in run.datasets()}
        tasks = sorted({DOWNLOAD_TASK[d] for d in needed})
        if "total" in tasks and "total_fast" in tasks and 297 not in needed:
            tasks.remove("total_fast")  # total's download holds the 6 mm crop model too
        return (
            f"on a machine with internet run `totalseg_download_weights -t {' -t '.join(tasks)}` (or TotalSegmentator "
            f"once), copy the Dataset* folders into {weights_dir()}, or set TOTALSEG_WEIGHTS_PATH (or "
            "TOTALSEG_HOME_DIR, which holds nnunet/results) to where they are"
        )

    def check_runs(self, runs: Sequence[TaskRun]) -> None:
        """Raise :class:`BackendUnavailableError` or :class:`MissingWeightsError` unless ``runs`` can run here."""
        self.require(self.missing_run_weights(runs), self.run_weights_fix(runs))

    def _device(self) -> str:
        return "gpu" if self.torch_device() == "cuda" else "cpu"

    def _run_one(self, run: TaskRun, input_path: Path, out_dir: Path) -> None:
        python = self.python()
        roi = list(run.roi_subset) if run.roi_subset else None
        spec = {name: dict(classes) for name, classes in run.spec.items()}
        if python is None:
            from scripts.anatomy import totalseg_runner

            totalseg_runner.run(str(input_path), str(out_dir), run.task, spec, self._device(), run.fast, roi)
            return
        command = [
            python, "-m", "scripts.anatomy.totalseg_runner", "--input", str(input_path), "--out_dir", str(out_dir),
            "--task", run.task, "--spec", json.dumps(spec), "--device", self._device(),
        ]  # fmt: skip
        if run.fast:
            command.append("--fast")
        if roi:
            command += ["--roi_subset", ",".join(roi)]
        env = dict(os.environ)
        bundle_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (bundle_root, env.get("PYTHONPATH", "")) if p)
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=float(self.options.get("timeout_s", 3600))
        )
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BackendUnavailableError(
                f"TotalSegmentator ({python}) task {run.task} failed with exit code {result.returncode}: {tail[0]}"
            )

    def run_tasks(self, ct_hu: np.ndarray, spacing: Sequence[float], runs: Sequence[TaskRun]) -> dict[str, np.ndarray]:
        """Run TotalSegmentator tasks on one CT and return the masks their specs name.

        Args:
            ct_hu: CT in HU, indexed (x, y, z) in RAS.
            spacing: voxel size in mm.
            runs: the task runs; mask names must be unique across them.

        Returns:
            mask name → ``uint8`` label map on the CT's grid (the labels of its spec, 0 elsewhere).

        Raises:
            BackendUnavailableError, MissingWeightsError: before any work when TotalSegmentator or weights of a run
                are missing; BackendUnavailableError also when a run fails.
        """
        names = [name for run in runs for name in run.spec]
        if len(set(names)) != len(names):
            raise ValueError(f"mask names repeat across TotalSegmentator runs: {names}")
        self.check_runs(runs)
        ct_hu = np.asarray(ct_hu, dtype=np.float32)
        affine = ras_affine(np.asarray(spacing, dtype=np.float64), ct_hu.shape)
        out: dict[str, np.ndarray] = {}
        with tempfile.TemporaryDirectory(prefix="medsyn_totalseg_") as tmp:
            input_path = Path(tmp, "ct.nii.gz")
            nib.save(nib.Nifti1Image(np.rint(ct_hu).astype(np.int16), affine), str(input_path))
            for run in runs:
                self._run_one(run, input_path, Path(tmp))
                for name in run.spec:
                    path = Path(tmp, f"{name}.nii.gz")
                    if not path.is_file():
                        raise BackendUnavailableError(f"TotalSegmentator task {run.task} wrote no {path.name}")
                    mask = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj).astype(np.uint8)
                    if mask.shape != ct_hu.shape:
                        raise BackendUnavailableError(
                            f"TotalSegmentator task {run.task}: {path.name} has shape {mask.shape}, CT {ct_hu.shape}"
                        )
                    out[name] = mask
        return out

    def _segment(self, ct_hu: np.ndarray, spacing: np.ndarray, structures: Sequence[str]) -> dict[str, np.ndarray]:
        return self.run_tasks(ct_hu, spacing, structure_runs(structures, self._fast()))

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("TotalSegmentator")
        except PackageNotFoundError:
            package = "separate environment" if self.python() else "not installed"
        return {
            "backend": self.name,
            "tasks": {"airway": VESSEL_TASK, "vessel": VESSEL_TASK, "lobe": LOBE_TASK},
            "fast_lobes": self._fast(),
            "version": package,
            "weights": str(weights_dir()),
            "python": self.python() or "in-process",
        }
