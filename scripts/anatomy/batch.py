"""The resumable batch runner: masks for every case of a datalist, and a new datalist that points to them.

For each case of the ``training`` and ``validation`` sections it writes, under ``OUT/<case id>/``:
``lobe.nii.gz`` (0..5), ``airway.nii.gz``, ``vessel.nii.gz`` (uint8, the image's own grid and affine) and last
``masks.json`` (backends used, timing). ``masks.json`` marks a finished case: a second run skips every case that
has it and all three masks, so an interrupted run resumes where it stopped. Each file is written atomically.
At the end ``OUT/datalist.json`` lists the finished cases (image and report paths relative to ``OUT``) and
``OUT/make_masks_summary.json`` the failures with their reasons.

Without ``overwrite`` nothing this command did not write is replaced. Before any backend is set up the run is
refused, with one line listing what would be replaced, when ``OUT`` holds
- the input datalist as ``OUT/datalist.json``;
- another ``OUT/datalist.json`` that no earlier run wrote (a folder without ``make_masks_summary.json``: e.g. the
  dataset's own datalist when ``--out`` is the dataset folder and ``--datalist`` another file in it);
- a mask file at the output path of a case still to make that is not one an interrupted run of this command left
  (its header says "MedSyn-MONAI <structure> mask" and the input datalist does not point to it): the dataset's
  own masks when ``--out`` is the dataset folder.
Refusing rather than skipping such cases is deliberate: a skipped case would enter the new datalist with masks of
unknown origin, and a partly processed dataset is harder to notice than an error. The fix is another ``--out`` (or
``overwrite``, which replaces them all).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as ornt
from tqdm import tqdm

from scripts.anatomy.backends import AUTO, describe_plan, plan_backends
from scripts.anatomy.base import STRUCTURES, Backend
from scripts.cli import parse_bool
from scripts.data.datalist import (
    IMAGE_KEY,
    PATH_KEYS,
    REPORT_FILE_KEY,
    SECTIONS,
    DataError,
    case_id,
    read_datalist,
    resolve_item,
    section_items,
)
from scripts.data.io import (
    OutputExistsError,
    json_text,
    read_nifti,
    remove_stale_temporaries,
    write_json,
    write_nifti,
)

logger = logging.getLogger(__name__)

MARKER = "masks.json"
MASK_DESCRIPTION = "MedSyn-MONAI {structure} mask ({backend})"  # in the header of every mask this command writes
DATALIST_NAME = "datalist.json"
SUMMARY_NAME = "make_masks_summary.json"
ON_ERROR = ("skip", "stop")


@dataclass
class CaseResult:
    """Outcome of one case: ``done``, ``skipped`` (already done) or ``failed`` with a one-line reason."""

    section: str
    index: int
    id: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    backends: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    """Outcome of a batch run."""

    results: list[CaseResult]
    datalist: str
    notes: list[str]
    backends: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def format(self) -> str:
        """Human-readable summary: counts, then one line per failed case."""
        lines = [
            f"make_masks: {self.count('done')} done, {self.count('skipped')} already done, "
            f"{self.count('failed')} failed; datalist {self.datalist}"
        ]
        if self.backends:
            lines.append("  backends: " + " ".join(f"{s}={b}" for s, b in self.backends.items()))
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  FAILED {r.section}[{r.index}] {r.id}: {r.reason}" for r in self.failed]
        return "\n".join(lines)


# --- one case ----------------------------------------------------------------------------------------------
def safe_name(cid: str) -> str:
    """A folder name for a case id (path separators and odd characters become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", cid).strip("._")
    return name or "case"


def case_dir(out_dir: str | os.PathLike, cid: str) -> Path:
    return Path(out_dir, safe_name(cid))


def is_done(folder: Path) -> bool:
    """A case is done when its marker and all three masks exist."""
    return (folder / MARKER).is_file() and all((folder / f"{s}.nii.gz").is_file() for s in STRUCTURES)


def load_ct_ras(item: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The case's CT in HU as a RAS array (x, y, z), its spacing in that order, the file's affine and orientation.

    CT-RATE items carry ``rescale_slope``/``rescale_intercept`` (stored values → HU) and ``spacing`` (the
    metadata's voxel size per file axis, which wins over the header's): both are applied here.
    """
    array, affine = read_nifti(item[IMAGE_KEY])
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{item[IMAGE_KEY]}: expected a 3D CT volume, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{item[IMAGE_KEY]}: CT holds NaN or inf values; re-export the volume")
    slope, intercept = item.get("rescale_slope"), item.get("rescale_intercept")
    if slope is not None or intercept is not None:
        array = array * float(1.0 if slope is None else slope) + float(0.0 if intercept is None else intercept)
    spacing = np.asarray(item.get("spacing") or np.linalg.norm(affine[:3, :3], axis=0), dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"{item[IMAGE_KEY]}: bad voxel spacing {spacing.tolist()}; fix the header or 'spacing'")
    orientation = ornt.io_orientation(affine)
    to_ras = ornt.ornt_transform(orientation, ornt.axcodes2ornt("RAS"))
    ras = ornt.apply_orientation(array, to_ras)
    spacing_ras = np.empty(3)
    spacing_ras[to_ras[:, 0].astype(int)] = spacing
    return np.ascontiguousarray(ras, dtype=np.float32), spacing_ras, affine, orientation


def ras_to_file(mask: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """A RAS-ordered mask back into the file's own axis order and directions."""
    back = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), orientation)
    return np.ascontiguousarray(ornt.apply_orientation(mask, back))


def process_case(
    item: Mapping[str, Any],
    cid: str,
    out_dir: Path,
    plan: Mapping[str, Backend],
    overwrite: bool = False,
) -> dict[str, Any]:
    """Make and write the three masks of one resolved datalist item; returns the provenance written.

    Files of an unfinished earlier attempt in the case's folder are replaced; a finished case is replaced only
    with ``overwrite``.
    """
    start = time.perf_counter()
    folder = case_dir(out_dir, cid)
    ct, spacing, affine, orientation = load_ct_ras(item)
    masks: dict[str, np.ndarray] = {}
    by_backend: dict[str, list[str]] = {}
    for structure, backend in plan.items():
        by_backend.setdefault(backend.name, []).append(structure)
    backends = {b.name: b for b in plan.values()}
    for name, structures in by_backend.items():
        masks.update(backends[name].segment(ct, spacing, structures))
    replace = overwrite or not (folder / MARKER).is_file()
    if (folder / MARKER).is_file():
        (folder / MARKER).unlink()  # the case is being redone: it is unfinished until the new marker is written
    for name in (*(f"{s}.nii.gz" for s in STRUCTURES), MARKER):
        remove_stale_temporaries(folder, name)  # what a killed attempt at this case left
    for structure in STRUCTURES:
        data = ras_to_file(masks[structure], orientation)
        write_nifti(
            folder / f"{structure}.nii.gz",
            data,
            affine,
            dtype="uint8",
            overwrite=replace,
            description=MASK_DESCRIPTION.format(structure=structure, backend=plan[structure].name),
        )
    provenance = {
        "id": cid,
        "image": str(item[IMAGE_KEY]),
        "structures": {s: plan[s].describe() for s in STRUCTURES},
        "shape": list(ct.shape),
        "spacing_ras_mm": [float(s) for s in spacing],
        "voxels": {s: int(np.count_nonzero(masks[s])) for s in STRUCTURES},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(folder / MARKER, provenance, overwrite=True)
    return provenance


# --- worker processes ----------------------------------------------------------------------------------------
_WORKER_PLAN: dict[str, Backend] | None = None


def _init_worker(plan_args: dict[str, Any]) -> None:
    global _WORKER_PLAN
    _WORKER_PLAN, _ = plan_backends(**plan_args)


def _run_in_worker(item: dict[str, Any], cid: str, out_dir: str, overwrite: bool) -> tuple[float, str]:
    assert _WORKER_PLAN is not None
    start = time.perf_counter()
    try:
        process_case(item, cid, Path(out_dir), _WORKER_PLAN, overwrite)
        return time.perf_counter() - start, ""
    except Exception as err:  # reported per case; the batch goes on
        return time.perf_counter() - start, f"{type(err).__name__}: {err}"


# --- the batch -----------------------------------------------------------------------------------------------
def _relative(path: str, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def _cases(datalist: dict[str, Any], dataset_dir: Path, sections: Sequence[str], source: str):
    cases, seen = [], {}
    for section in sections:
        if section not in datalist:
            continue
        for index, raw in enumerate(section_items(datalist, section, source)):
            if not isinstance(raw, dict) or IMAGE_KEY not in raw:
                cases.append((section, index, raw, None, f"{section}[{index}]"))
                continue
            item = resolve_item(raw, dataset_dir)
            cid = case_id(item, default=f"{section}_{index}")
            folder = safe_name(cid)
            if folder in seen:
                raise DataError(
                    f"{source}: cases {seen[folder]} and {section}[{index}] share the output folder '{folder}'; "
                    "give them distinct 'id' values"
                )
            seen[folder] = f"{section}[{index}]"
            cases.append((section, index, raw, item, cid))
    return cases


def make_masks(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    backend: str = AUTO,
    overrides: Mapping[str, str | None] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    on_error: str = "skip",
    workers: int = 1,
    sections: Iterable[str] = SECTIONS,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Make lobe, airway and vessel masks for every case of a datalist (resumable).

    Args:
        datalist: input datalist JSON (``{"training": [...], "validation": [...]}``).
        out_dir: output folder for the masks, the new datalist and the summary.
        dataset_dir: root of relative paths in the datalist (default: the datalist's folder).
        backend: ``auto`` or a backend name (see :func:`scripts.anatomy.backends.plan_backends`).
        overrides: structure → backend name.
        options: backend name → options.
        device: ``auto``, ``cpu`` or ``cuda``.
        on_error: ``skip`` records a failed case and goes on (and falls back to the next ready backend when the
            requested one is not ready); ``stop`` raises at the first problem.
        workers: parallel worker processes (1: in this process). Use 1 with a GPU backend.
        sections: datalist sections to process.
        overwrite: redo finished cases too, and replace files under ``out_dir`` this command did not write.
        progress: show a progress bar.

    Returns:
        the :class:`Summary`; its ``failed`` list is empty when every case succeeded.

    Raises:
        OutputExistsError: without ``overwrite``, before any compute, when the run would replace the input datalist,
            a datalist or mask files this command did not write (``out_dir`` is the dataset folder).
        DataError: an unreadable datalist (or, with ``on_error="stop"``, a malformed item).
    """
    overwrite = parse_bool(overwrite, "overwrite")  # "false" from `monai.bundle run` is a truthy string
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    datalist_path = Path(datalist)
    root = Path(dataset_dir) if dataset_dir is not None else datalist_path.parent
    out = Path(out_dir)
    source = str(datalist_path)
    data = read_datalist(datalist_path)
    sections = [s for s in sections if s in data]
    if not sections:
        raise DataError(f"{source}: none of the sections {list(SECTIONS)} present; sections: {sorted(data)}")
    cases = _cases(data, root, sections, source)
    results: list[CaseResult] = []
    todo = []
    for section, index, raw, item, cid in cases:
        if item is None:
            reason = f"item is not a JSON object with an '{IMAGE_KEY}' path; fix {source}"
            if on_error == "stop":
                raise DataError(f"case {cid}: {reason}")
            results.append(CaseResult(section, index, cid, "failed", reason))
        elif not overwrite and is_done(case_dir(out, cid)):
            results.append(CaseResult(section, index, cid, "skipped"))
        else:
            todo.append((section, index, raw, item, cid))
    if not overwrite:  # before the backends are set up (weights loaded, a subprocess checked): a refusal costs nothing
        _refuse_replacing(datalist_path, cases, todo, out)
    plan_args = {
        "backend": backend,
        "structures": STRUCTURES,
        "overrides": dict(overrides or {}),
        "options": {k: dict(v) for k, v in (options or {}).items()},
        "device": device,
        "fallback": on_error == "skip",
    }
    plan, notes = plan_backends(**plan_args)
    for note in notes:
        logger.warning(note)
    logger.info("backends: %s", describe_plan(plan))
    out.mkdir(parents=True, exist_ok=True)
    names = {s: b.name for s, b in plan.items()}
    bar = tqdm(total=len(todo), desc="masks", unit="case", disable=not progress or not todo)
    try:
        if workers == 1 or len(todo) <= 1:
            for section, index, _, item, cid in todo:
                start = time.perf_counter()
                try:
                    process_case(item, cid, out, plan, overwrite)
                    results.append(CaseResult(section, index, cid, "done", "", time.perf_counter() - start, names))
                except Exception as err:
                    if on_error == "stop":
                        raise RuntimeError(f"case {cid}: {type(err).__name__}: {err}") from err
                    reason = f"{type(err).__name__}: {err}"
                    logger.error("case %s failed: %s", cid, reason)
                    results.append(CaseResult(section, index, cid, "failed", reason, time.perf_counter() - start))
                bar.update(1)
        else:
            worker_args = dict(plan_args, fallback=True)  # the plan was checked above; workers take the same choice
            worker_args["overrides"] = dict(names)
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(worker_args,)) as pool:
                futures = {
                    pool.submit(_run_in_worker, item, cid, str(out), overwrite): (section, index, cid)
                    for section, index, _, item, cid in todo
                }
                for future in as_completed(futures):
                    section, index, cid = futures[future]
                    seconds, reason = future.result()
                    if reason and on_error == "stop":
                        pool.shutdown(cancel_futures=True)
                        raise RuntimeError(f"case {cid}: {reason}")
                    status = "failed" if reason else "done"
                    results.append(CaseResult(section, index, cid, status, reason, seconds, {} if reason else names))
                    bar.update(1)
    finally:
        bar.close()

    results.sort(key=lambda r: (sections.index(r.section), r.index))
    datalist_out = out / DATALIST_NAME
    summary = Summary(results, str(datalist_out), notes, names)
    summary_obj = {
        "datalist": str(datalist_out),
        "backends": names,
        "notes": notes,
        "counts": {s: summary.count(s) for s in ("done", "skipped", "failed")},
        "failed": [asdict(r) for r in summary.failed],
    }
    # the summary first: it is what marks OUT/datalist.json as this command's (see _refuse_replacing), so a run
    # killed between the two writes leaves a datalist the next run may replace, never one it refuses as foreign
    _write_if_changed(out / SUMMARY_NAME, summary_obj)
    _write_datalist(data, cases, results, out, sections)
    return summary


def _written_here(path: Path, structure: str) -> bool:
    """Whether a mask file is one this command wrote (its header says so)."""
    import nibabel as nib

    try:
        description = nib.load(str(path)).header["descrip"].tobytes().decode("ascii", "replace")
    except Exception:  # not a readable NIfTI: not ours either
        return False
    return description.startswith(MASK_DESCRIPTION.split("(")[0].format(structure=structure))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through a symlink, a hard link or another spelling of the path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def _listed(paths: Sequence[Path], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(str(p) for p in paths[:shown]) + more


def _refuse_replacing(datalist: Path, cases: list, todo: list, out: Path) -> None:
    """Raise :class:`OutputExistsError` when the run would replace a file this command did not write (see the module
    docstring): the input datalist, another datalist, or masks that came with the dataset; one line lists them."""
    found = []
    target = out / DATALIST_NAME
    if _same_file(target, datalist):
        found.append(f"the input datalist {datalist}")
    elif target.is_file() and not (out / SUMMARY_NAME).is_file():
        found.append(f"{target} (a datalist no earlier run of this command wrote)")
    referenced = {
        Path(item[s]).resolve() for _, _, _, item, _ in cases if item is not None for s in STRUCTURES if item.get(s)
    }
    foreign = [
        path
        for _, _, _, _, cid in todo
        for structure, path in ((s, case_dir(out, cid) / f"{s}.nii.gz") for s in STRUCTURES)
        if path.is_file() and (path.resolve() in referenced or not _written_here(path, structure))
    ]
    if foreign:
        found.append(
            f"{len(foreign)} mask files under --out {out} that this command did not write (the dataset's own "
            f"masks?): {_listed(foreign)}"
        )
    if found:
        raise OutputExistsError(
            f"--out {out} would replace {' and '.join(found)}; give another --out (or --overwrite to replace them)"
        )


def _write_if_changed(path: Path, obj: Any) -> None:
    text = json_text(obj)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    write_json(path, obj, overwrite=True)


def _write_datalist(
    data: dict[str, Any], cases: list, results: list[CaseResult], out: Path, sections: Sequence[str]
) -> Path:
    """The input datalist with every finished case pointing to its masks; failed cases are left out."""
    ok = {(r.section, r.index) for r in results if r.status in ("done", "skipped")}
    new: dict[str, Any] = {k: v for k, v in data.items() if k not in sections}
    for section in sections:
        new[section] = []
    for section, index, raw, item, cid in cases:
        if (section, index) not in ok:
            continue
        entry = dict(raw)
        entry.setdefault("id", cid)
        for key in PATH_KEYS:
            if key in item and key not in STRUCTURES:
                entry[key] = _relative(item[key], out)
        for structure in STRUCTURES:
            entry[structure] = f"{safe_name(cid)}/{structure}.nii.gz"
        if REPORT_FILE_KEY in entry and not entry[REPORT_FILE_KEY]:
            del entry[REPORT_FILE_KEY]
        new[section].append(entry)
    path = out / DATALIST_NAME
    _write_if_changed(path, new)
    return path


def raise_on_failure(summary: Summary) -> Summary:
    """Print the summary and raise when a case failed (so ``monai.bundle run`` exits nonzero); else return it."""
    print(summary.format())
    if summary.failed:
        raise RuntimeError(f"{len(summary.failed)} case(s) failed; see {Path(summary.datalist).parent / SUMMARY_NAME}")
    return summary
