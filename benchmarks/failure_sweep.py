"""Bad values and interruptions against every command-line entry, as a user types them; prints the count table.

    python -m benchmarks.failure_sweep [--ci] [--workers 2] [--json FILE]

Each case runs one command (``python -m monai.bundle run ...`` or ``python -m scripts....``) in a workspace of
small files (a two-case phantom dataset, a damaged weights file, a report that is not UTF-8, a label map posing as a
CT) and is judged on what a user sees: a non-zero exit, exactly one line on stderr (MONAI's notice about trusting a
config aside), no traceback, the expected words in that line, and every file of the workspace unchanged. The
interruption cases kill a generating run with SIGKILL and rerun the same command: it must finish, keep what was
finished and leave every sample whole (its sidecar written after its volumes). ``--ci`` runs the subset that
``tests/test_cli_failures.py`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# MONAI's own notice on every config it parses (a trust warning, two lines), not the command's output
MONAI_NOTICE = ("UserWarning: parsing config_file", "workflow = create_workflow(")


@dataclass(frozen=True)
class Case:
    """One bad command: ``expect`` must be in its one line (None: any one line will do); ``ci``: in the tests."""

    name: str
    command: tuple[str, ...]
    expect: str | None = None
    ci: bool = False


def bundle(config: str, run_id: str, *options: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", f"configs/{config}.json", *options)


def module(name: str, *options: str) -> tuple[str, ...]:
    return (sys.executable, "-m", name, *options)


def make_workspace(ws: Path) -> Path:
    """The files the cases read (and must leave as they are)."""
    import numpy as np

    from scripts.data.io import ras_affine, write_nifti
    from scripts.phantom import write_dataset

    write_dataset(ws / "phantom", 2, size=32, seed=0, val_fraction=0.5)
    (ws / "out").mkdir()
    (ws / "out" / "keep.txt").write_text("a file the commands must leave alone")
    (ws / "empty").mkdir()
    (ws / "latin1.txt").write_bytes("Findings: pleural effusion. Côte à côte.".encode("latin-1"))
    weights = REPO / "models" / "lowres_small.pt"
    (ws / "damaged.pt").write_bytes(weights.read_bytes()[:4096])  # an interrupted download
    shutil.copy(weights.with_suffix(".json"), ws / "damaged.json")
    write_nifti(ws / "flat.nii.gz", np.zeros((16, 16, 1)), ras_affine((1, 1, 1), (16, 16, 1)), "int16")
    write_nifti(ws / "nan.nii.gz", np.full((8, 8, 8), np.nan), np.eye(4), "float32")
    # "real" CTs that are label maps (the mistake of a datalist pointing at the wrong key)
    cases = json.loads((ws / "phantom" / "datalist.json").read_text())
    for section in ("training", "validation"):
        for item in cases.get(section, []):
            item["image"] = item["lobe"]
    (ws / "phantom" / "labels_as_ct.json").write_text(json.dumps(cases))
    (ws / "not_json.json").write_text("{ this is not JSON")
    (ws / "huge.txt").write_text("Findings: effusion. " * 20000)  # 400,000 characters
    return ws


def cases(ws: Path) -> list[Case]:
    out, data = str(ws / "out"), ws / "phantom"
    fast = ("--sr_weights", "", "--steps_lowres", "2", "--output_dir", out)
    train = ("--output_dir", str(ws / "train"))
    evaluate = ("--output_dir", str(ws / "evaluation"), "--parts", "['measures']")
    real = ("--synthetic_dir", str(data), "--synthetic_glob", "**/ct.nii.gz")
    none_json, none_nii = str(ws / "none.json"), str(ws / "none.nii.gz")

    def inference(name: str, *options: str, expect: str | None = None, ci: bool = False) -> Case:
        return Case(f"inference-{name}", bundle("inference", "inference", *fast, *options), expect, ci)

    return [
        inference("nan-guidance", "--guidance_scale", "nan", expect="finite number", ci=True),
        inference("inf-guidance", "--guidance_scale", "inf", expect="finite number"),
        inference("text-guidance", "--guidance_scale", "abc", expect="--guidance_scale"),
        inference("bad-output-format", "--output_format", "dcm", expect="--output_format must be one of", ci=True),
        inference("overwrite-maybe", "--overwrite", "maybe", expect="--overwrite must be true or false", ci=True),
        inference("text-steps", "--steps_lowres", "abc", expect="--steps_lowres"),
        inference("zero-steps", "--steps_lowres", "0", expect="--steps_lowres"),
        inference("fraction-steps", "--steps_lowres", "2.5", expect="--steps_lowres"),
        inference("text-tile", "--sr_tile", "abc", expect="--sr_tile"),
        inference("zero-tile", "--sr_tile", "[0,-1,-1]", expect="--sr_tile"),
        inference("big-overlap", "--sr_overlap", "1.5", expect="--sr_overlap"),
        inference("text-samples", "--num_samples", "abc", expect="--num_samples"),
        inference("zero-samples", "--num_samples", "0", expect="--num_samples"),
        inference("negative-seed", "--seed", "-1", expect="--seed"),
        inference("nan-spacing", "--spacing", "[1,nan,1]", expect="--spacing"),
        inference("bad-size-mode", "--size_mode", "stretch", expect="stretch"),
        inference("empty-prompt", "--prompt", "' '"),
        inference("huge-prompt", "--prompt_file", str(ws / "huge.txt"), expect="limit"),
        inference("missing-prompt-file", "--prompt_file", none_json, expect="none.json"),
        inference("prompt-file-not-utf8", "--prompt_file", str(ws / "latin1.txt"), expect="UTF-8", ci=True),
        inference("missing-lobe", "--lobe", none_nii, expect="'lobe' file not found", ci=True),
        inference("image-not-nifti", "--image", str(ws / "latin1.txt"), expect="cannot read as NIfTI", ci=True),
        inference("flat-airway", "--airway", str(ws / "flat.nii.gz"), expect="flat.nii.gz"),
        inference("nan-vessel", "--vessel", str(ws / "nan.nii.gz"), expect="nan.nii.gz"),
        inference("missing-weights", "--lowres_weights", str(ws / "none.pt"), expect="none.pt"),
        inference("damaged-weights", "--lowres_weights", str(ws / "damaged.pt"), expect="damaged.pt", ci=True),
        inference("missing-text-encoder", "--text_encoder", str(ws / "no_encoder"), expect="no_encoder"),
        Case(
            "inference-output-dir-is-a-file",
            bundle("inference", "inference", "--sr_weights", "", "--output_dir", str(ws / "latin1.txt")),
            "is a file, not a folder",
            ci=True,
        ),
        Case(
            "synthesize-text-folds", bundle("inference", "synthesize", *fast, "--num_folds", "abc"), "--num_folds", True
        ),
        Case("synthesize-zero-folds", bundle("inference", "synthesize", *fast, "--num_folds", "0"), "--num_folds"),
        Case(
            "synthesize-into-another-dataset",
            bundle("inference", "synthesize", "--sr_weights", "", "--output_dir", str(data)),
            "datalist of another dataset",
            ci=True,
        ),
        Case(
            "segment-missing-image",
            bundle("inference", "segment", "--image", none_nii, "--output_dir", out),
            "none.nii.gz",
            True,
        ),
        Case(
            "segment-text-tile",
            bundle(
                "inference",
                "segment",
                "--image",
                str(data / "case_0000" / "ct.nii.gz"),
                "--output_dir",
                out,
                "--sr_tile",
                "abc",
            ),
            "--sr_tile",
            True,
        ),
        Case(
            "segment-missing-folder",
            bundle("inference", "segment", "--dataset_dir", str(ws / "no_folder"), "--output_dir", out),
            "no_folder",
        ),
        Case(
            "segment-flat-image",
            bundle("inference", "segment", "--image", str(ws / "flat.nii.gz"), "--output_dir", out),
            "flat.nii.gz",
        ),
        Case(
            "segment-overwrite-maybe",
            bundle("inference", "segment", "--image", str(ws / "flat.nii.gz"), "--overwrite", "maybe"),
            "--overwrite",
        ),
        Case("training-nan-lr", bundle("train", "training", *train, "--lr", "nan"), "config 'lr'", True),
        Case("training-text-lr", bundle("train", "training", *train, "--lr", "abc"), "config 'lr'"),
        Case("training-bad-preset", bundle("train", "training", *train, "--preset", "huge"), "config 'preset'", True),
        Case("training-bad-stage", bundle("train", "training", *train, "--stage", "hires"), "config 'stage'"),
        Case("training-text-epochs", bundle("train_sr", "training", *train, "--max_epochs", "abc"), "max_epochs", True),
        Case("training-zero-batch", bundle("train", "training", *train, "--batch_size", "0"), "batch"),
        Case("training-missing-datalist", bundle("train", "training", *train, "--datalist", none_json), "none.json"),
        Case("export-bad-preset", bundle("train", "export", *train, "--preset", "huge"), "config 'preset'", True),
        Case(
            "evaluate-empty-synthetic",
            bundle("evaluate", "evaluate", *evaluate, "--synthetic_dir", str(ws / "empty")),
            "empty",
            ci=True,
        ),
        Case(
            "evaluate-missing-datalist",
            bundle("evaluate", "evaluate", *evaluate, *real, "--real_datalist", none_json),
            "none.json",
            ci=True,
        ),
        Case(
            "evaluate-missing-split",
            bundle(
                "evaluate",
                "evaluate",
                *evaluate,
                *real,
                "--real_datalist",
                str(data / "datalist.json"),
                "--real_split",
                "test",
            ),
            "test",
        ),
        Case(
            "evaluate-labels-as-ct",
            bundle("evaluate", "evaluate", *evaluate, *real, "--real_datalist", str(data / "labels_as_ct.json")),
            "label map",
        ),
        Case(
            "evaluate-no-medicalnet",
            bundle(
                "evaluate",
                "evaluate",
                "--output_dir",
                str(ws / "evaluation"),
                *real,
                "--real_datalist",
                str(data / "datalist.json"),
            ),
            "medicalnet",
        ),
        Case("evaluate-bad-part", bundle("evaluate", "evaluate", *evaluate[:2], "--parts", "['fun']", *real), "fun"),
        Case(
            "anatomy-missing-datalist",
            module("scripts.anatomy", "--datalist", none_json, "--out", out),
            "none.json",
            True,
        ),
        Case(
            "anatomy-text-workers",
            module("scripts.anatomy", "--datalist", str(data / "datalist.json"), "--out", out, "--workers", "abc"),
            "--workers",
            ci=True,
        ),
        Case(
            "anatomy-not-json",
            module("scripts.anatomy", "--datalist", str(ws / "not_json.json"), "--out", out),
            "not_json",
        ),
        Case(
            "anatomy-bad-backend",
            module("scripts.anatomy", "--datalist", str(data / "datalist.json"), "--out", out, "--backend", "magic"),
            "--backend",
        ),
        Case(
            "anatomy-into-its-dataset",
            module(
                "scripts.anatomy",
                "--datalist",
                str(data / "datalist.json"),
                "--out",
                str(data),
                "--backend",
                "classical",
            ),
            "--overwrite",
        ),
        Case("phantom-bad-size", module("scripts.phantom", "--out", str(ws / "ph"), "--size", "7"), "size", True),
        Case("phantom-text-num", module("scripts.phantom", "--out", str(ws / "ph"), "--num", "abc"), "--num", True),
        Case(
            "phantom-bad-findings", module("scripts.phantom", "--out", str(ws / "ph"), "--findings", "warts"), "warts"
        ),
        Case(
            "phantom-existing",
            module("scripts.phantom", "--out", str(data), "--num", "2", "--size", "32"),
            "--overwrite",
        ),
        Case(
            "text-missing-datalist",
            module("scripts.text", "encode", "--datalist", none_json, "--out", str(ws / "cache")),
            "none.json",
            ci=True,
        ),
        Case(
            "text-missing-model",
            module(
                "scripts.text",
                "encode",
                "--datalist",
                str(data / "datalist.json"),
                "--out",
                str(ws / "cache"),
                "--model",
                str(ws / "no_model"),
            ),
            "no_model",
        ),
        Case(
            "convert-missing-checkpoint",
            module(
                "scripts.convert_official",
                "--checkpoint",
                str(ws / "none_ckpt"),
                "--stage",
                "lowres",
                "--out",
                str(ws / "c.pt"),
            ),
            "none_ckpt",
            ci=True,
        ),
        Case(
            "convert-bad-stage",
            module("scripts.convert_official", "--checkpoint", str(ws), "--stage", "hires", "--out", str(ws / "c.pt")),
            "--stage",
            ci=True,
        ),
        Case(
            "convert-damaged-checkpoint",
            module(
                "scripts.convert_official",
                "--checkpoint",
                str(ws / "damaged.pt"),
                "--stage",
                "lowres",
                "--out",
                str(ws / "c.pt"),
            ),
            "damaged.pt",
        ),
        Case("merge-missing", module("scripts.data.merge", none_json, "--out", str(ws / "m.json")), "none.json"),
        Case("validation-missing", module("scripts.data.validation", "--datalist", none_json), "none.json"),
    ]


def stderr_lines(stderr: str) -> list[str]:
    """What the command itself printed on stderr (blank lines and MONAI's config notice left out)."""
    return [line for line in stderr.splitlines() if line.strip() and not any(n in line for n in MONAI_NOTICE)]


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def judge(case: Case, done: subprocess.CompletedProcess) -> dict:
    """The verdict on one case, as the count table reports it."""
    lines = stderr_lines(done.stderr)
    return {
        "case": case.name,
        "exit": done.returncode,
        "stderr_lines": len(lines),
        "traceback": "Traceback" in done.stderr,
        "one_line": done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr,
        "expected": case.expect is None or (len(lines) == 1 and case.expect in lines[0]),
        "message": lines[-1][:300] if lines else "",
    }


def run_cases(ws: Path, selected: list[Case], workers: int = 2) -> tuple[list[dict], list[str]]:
    """Run the cases two at a time; returns their verdicts and the workspace files they added, changed or
    removed."""
    before = digest(ws)

    def run(case: Case) -> dict:
        done = subprocess.run(case.command, cwd=REPO, capture_output=True, text=True, timeout=900)
        return judge(case, done)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(run, selected))
    after = digest(ws)
    changed = sorted(name for name in before.keys() | after.keys() if after.get(name) != before.get(name))
    return verdicts, changed


def _samples_whole(folder: Path) -> tuple[int, int]:
    """(samples whose sidecar exists and was written after each of its files, samples with a sidecar)."""
    whole = total = 0
    for sidecar in folder.glob("*.json"):
        meta = json.loads(sidecar.read_text())
        if "files" not in meta:
            continue
        total += 1
        files = [folder / name for name in meta["files"].values()]
        whole += all(f.is_file() and f.stat().st_mtime_ns <= sidecar.stat().st_mtime_ns for f in files)
    return whole, total


def interruption_cases(ws: Path) -> list[dict]:
    """Kill generating runs with SIGKILL, rerun the same command, and judge what is left."""
    out = ws / "killed"
    command = bundle(
        "inference",
        "inference",
        "--sr_weights",
        "",
        "--steps_lowres",
        "4",
        "--num_samples",
        "4",
        "--output_dir",
        str(out),
    )
    results = []
    for name, extra, wait_for in (
        ("inference-killed-then-rerun", (), "prompt_seed1.json"),
        (
            "inference-overwrite-killed-then-rerun",
            ("--guidance_scale", "2", "--overwrite", "true"),
            "prompt_seed1.json",
        ),
    ):
        start = time.time()  # the second run replaces the first's samples: it is killed while it does
        process = subprocess.Popen([*command, *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = out / wait_for
        while process.poll() is None and not (target.exists() and target.stat().st_mtime > start):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        whole_after_kill, with_sidecar = _samples_whole(out)
        kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
        rerun = subprocess.run([*command, *extra], cwd=REPO, capture_output=True, text=True, timeout=900)
        whole, total = _samples_whole(out)
        results.append(
            {
                "case": name,
                "after_kill": f"{whole_after_kill}/{with_sidecar} samples whole",
                "rerun_exit": rerun.returncode,
                "after_rerun": f"{whole}/{total} samples whole",
                "kept": sum(p.stat().st_mtime_ns == kept.get(p.name) for p in out.glob("*.json")),
                "temporaries_left": len(list(out.glob(".*.tmp*"))),
                "ok": rerun.returncode == 0 and whole == total == 4 and whole_after_kill == with_sidecar,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", action="store_true", help="only the cases the tests run")
    parser.add_argument("--workers", type=int, default=2, help="commands run at once")
    parser.add_argument("--json", default=None, help="write the verdicts here too")
    parser.add_argument("--workspace", default=None, help="folder for the workspace (default: a temporary one)")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(args.workspace or tmp))
        selected = [c for c in cases(ws) if c.ci or not args.ci]
        verdicts, changed = run_cases(ws, selected, args.workers)
        killed = [] if args.ci else interruption_cases(ws)
    print("| case | exit | stderr lines | traceback | expected words | message |")
    print("|---|---|---|---|---|---|")
    for v in verdicts:
        message = v["message"].replace("|", "\\|")
        print(f"| {v['case']} | {v['exit']} | {v['stderr_lines']} | {v['traceback']} | {v['expected']} | {message} |")
    for k in killed:
        print(
            f"| {k['case']} | rerun {k['rerun_exit']} | after kill {k['after_kill']}; after rerun {k['after_rerun']}"
            f"; {k['kept']} kept; {k['temporaries_left']} temporaries left | | {k['ok']} | |"
        )
    summary = {
        "bad_inputs": len(verdicts),
        "one_line_errors": sum(v["one_line"] for v in verdicts),
        "tracebacks": sum(v["traceback"] for v in verdicts),
        "exit_0": sum(v["exit"] == 0 for v in verdicts),
        "unexpected_message": sum(not v["expected"] for v in verdicts),
        "files_changed": changed,
        "interruptions": len(killed),
        "interruptions_ok": sum(k["ok"] for k in killed),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "cases": verdicts, "killed": killed}, indent=2))
    return 0 if summary["one_line_errors"] == len(verdicts) and not changed else 1


if __name__ == "__main__":
    sys.exit(main())
