"""TotalSegmentator (Wasserthal et al. 2023) as a backend: task ``lung_vessels`` for vessels and airway, and
optionally its ``total`` task for the five lobes.

Optional dependency, best kept in its own environment (it replaces torch with a CUDA build unless pinned and
installs a torchvision that breaks ``transformers`` beside CPU torch; SPEC.md §13)::

    python -m venv ~/totalseg-env
    ~/totalseg-env/bin/pip install TotalSegmentator==2.18.0 torch==2.13.0

then pass ``--totalseg_python ~/totalseg-env/bin/python`` (or set ``MEDSYN_TOTALSEG_PYTHON``): the backend runs
:mod:`scripts.anatomy.totalseg_runner` with that interpreter. When ``totalsegmentator`` is importable in the
bundle's own environment it is called in-process instead.

TotalSegmentator downloads weights at first use, which fails offline; this wrapper checks the weight folders
first, in TotalSegmentator's own place: ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``,
else ``~/.totalsegmentator/nnunet/results``. Needed folders (nnU-Net datasets):

- vessels and airway (task ``lung_vessels``): ``Dataset258_lung_vessels_248subj`` and, for the lung crop it
  runs first, ``Dataset298_TotalSegmentator_total_6mm_1559subj``;
- lobes (task ``total``, only the five lobe classes): ``Dataset291`` … ``Dataset295`` (the five 1.5 mm parts)
  and ``Dataset298`` for the crop; with ``totalseg_fast`` ``Dataset297_TotalSegmentator_total_3mm_1559subj`` and
  ``Dataset298`` instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from scripts.anatomy.base import Backend, BackendUnavailableError, register_backend
from scripts.data.io import ras_affine

PYTHON_ENV = "MEDSYN_TOTALSEG_PYTHON"
VESSEL_TASK = "lung_vessels"
LOBE_TASK = "total"
DATASETS = {
    258: "Dataset258_lung_vessels_248subj",
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}
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


def required_datasets(structures: Sequence[str], fast: bool = False) -> list[int]:
    """nnU-Net dataset ids needed to make ``structures``."""
    ids: set[int] = set()
    if any(s in ("airway", "vessel") for s in structures):
        ids |= {258, 298}
    if "lobe" in structures:
        ids |= {297, 298} if fast else {291, 292, 293, 294, 295, 298}
    return sorted(ids)


@register_backend
class TotalSegmentatorBackend(Backend):
    """Vessels and airway by TotalSegmentator's ``lung_vessels`` task; lobes by its ``total`` task.

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

    def missing_weights(self, structures: Sequence[str]) -> list[Path]:
        root = weights_dir()
        fast = bool(self.options.get("totalseg_fast", False))
        missing = []
        for dataset in required_datasets(structures, fast):
            folder = root / DATASETS[dataset]
            if not folder.is_dir() or not any(folder.iterdir()):
                missing.append(folder)
        return missing

    def weights_fix(self, structures: Sequence[str]) -> str:
        tasks = sorted({LOBE_TASK if s == "lobe" else VESSEL_TASK for s in structures})
        return (
            f"on a machine with internet run `totalseg_download_weights -t {' -t '.join(tasks)}` (or TotalSegmentator "
            f"once), copy the Dataset* folders into {weights_dir()}, or set TOTALSEG_WEIGHTS_PATH (or "
            "TOTALSEG_HOME_DIR, which holds nnunet/results) to where they are"
        )

    def _device(self) -> str:
        return "gpu" if self.torch_device() == "cuda" else "cpu"

    def _jobs(self, structures: Sequence[str]) -> list[dict[str, Any]]:
        """One TotalSegmentator call per task: its task, output spec, ROI subset and speed option."""
        jobs = []
        vessel_spec = {s: VESSEL_CLASSES[s] for s in structures if s in VESSEL_CLASSES}
        if vessel_spec:
            jobs.append({"task": VESSEL_TASK, "spec": vessel_spec, "fast": False, "roi_subset": None})
        if "lobe" in structures:
            jobs.append(
                {
                    "task": LOBE_TASK,
                    "spec": {"lobe": LOBE_CLASSES},
                    "fast": bool(self.options.get("totalseg_fast", False)),
                    "roi_subset": list(LOBE_CLASSES),
                }
            )
        return jobs

    def _run_job(self, job: dict[str, Any], input_path: Path, out_dir: Path) -> None:
        python = self.python()
        if python is None:
            from scripts.anatomy import totalseg_runner

            totalseg_runner.run(
                str(input_path), str(out_dir), job["task"], job["spec"], self._device(), job["fast"], job["roi_subset"]
            )
            return
        command = [
            python, "-m", "scripts.anatomy.totalseg_runner", "--input", str(input_path), "--out_dir", str(out_dir),
            "--task", job["task"], "--spec", json.dumps(job["spec"]), "--device", self._device(),
        ]  # fmt: skip
        if job["fast"]:
            command.append("--fast")
        if job["roi_subset"]:
            command += ["--roi_subset", ",".join(job["roi_subset"])]
        env = dict(os.environ)
        bundle_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (bundle_root, env.get("PYTHONPATH", "")) if p)
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=float(self.options.get("timeout_s", 3600))
        )
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BackendUnavailableError(
                f"TotalSegmentator ({python}) task {job['task']} failed with exit code {result.returncode}: {tail[0]}"
            )

    def _segment(self, ct_hu: np.ndarray, spacing: np.ndarray, structures: Sequence[str]) -> dict[str, np.ndarray]:
        affine = ras_affine(spacing, ct_hu.shape)
        out: dict[str, np.ndarray] = {}
        with tempfile.TemporaryDirectory(prefix="medsyn_totalseg_") as tmp:
            input_path = Path(tmp, "ct.nii.gz")
            nib.save(nib.Nifti1Image(np.rint(ct_hu).astype(np.int16), affine), str(input_path))
            for job in self._jobs(structures):
                self._run_job(job, input_path, Path(tmp))
                for structure in job["spec"]:
                    path = Path(tmp, f"{structure}.nii.gz")
                    if not path.is_file():
                        raise BackendUnavailableError(f"TotalSegmentator task {job['task']} wrote no {path.name}")
                    image = nib.as_closest_canonical(nib.load(str(path)))
                    out[structure] = np.asarray(image.dataobj).astype(np.uint8)
        return out

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("TotalSegmentator")
        except PackageNotFoundError:
            package = "separate environment" if self.python() else "not installed"
        return {
            "backend": self.name,
            "tasks": {"airway": VESSEL_TASK, "vessel": VESSEL_TASK, "lobe": LOBE_TASK},
            "fast_lobes": bool(self.options.get("totalseg_fast", False)),
            "version": package,
            "weights": str(weights_dir()),
            "python": self.python() or "in-process",
        }
