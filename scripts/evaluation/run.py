"""The evaluation command: run the selected parts on generated and real volumes, write report and figures.

Parts (``PARTS``): ``measures`` (anatomy measures of every synthetic and real volume), ``fid`` (3D MedicalNet FID
and MMD), ``fid_2p5d`` (MAISI's 2.5D FID), ``memorisation`` (audit against the training split), ``adherence``
(prompt-pair study on a folder of generated volumes with prompt sidecars), ``maps`` (the generated anatomy maps:
voxel fractions against the training data's, Dice against the segmentation of the generated CT, lobe order),
``segmentation`` (Dice of predicted masks
against the datalist's masks), ``agreement`` (classical measures against the phantom's truth), ``ctclip`` (the
CT-CLIP score of the VLM3D text-to-CT challenge: generated volumes against their reports and their real cases).
Volumes are streamed: each is read once and every part that needs it takes what it needs.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scripts.cli import parse_bool
from scripts.data.io import read_nifti, refuse_existing
from scripts.evaluation import (
    adherence,
    agreement,
    anatomy_maps,
    anatomy_measures,
    ctclip,
    data,
    distances,
    features,
    memorisation,
    segmentation,
)
from scripts.evaluation.anatomy_measures import measures_summary
from scripts.evaluation.report import write_report

PARTS = ("measures", "fid", "fid_2p5d", "memorisation", "adherence", "maps", "segmentation", "agreement", "ctclip")
DEFAULT_PARTS = ("measures", "fid", "fid_2p5d", "memorisation")


class _Collector:
    """Per-volume work of the streamed parts: features, 2.5D features, thumbnails, measures."""

    def __init__(self, net3d, net2d, thumbs: bool, measure: bool, settings: dict) -> None:
        self.net3d, self.net2d, self.thumbs, self.measure, self.s = net3d, net2d, thumbs, measure, settings
        self.ids: list[str] = []
        self.f3d: list = []
        self.f2d: dict[str, list] = {p: [] for p in features.PLANES}
        self.thumbnails: list[np.ndarray] = []
        self.rows: list[dict[str, float]] = []

    def add(self, vid: str, ct: np.ndarray, spacing: Sequence[float]) -> None:
        self.ids.append(vid)
        if self.net3d is not None:
            self.f3d.append(features.features_3d([ct], self.net3d, self.s["feature_size"], progress=False))
        if self.net2d is not None:
            for plane, value in features.features_2p5d([ct], self.net2d, self.s["slice_step"], progress=False).items():
                self.f2d[plane].append(value)
        if self.thumbs:
            self.thumbnails.append(memorisation.thumbnail(ct))
        if self.measure:
            self.rows.append(anatomy_measures.measure_ct(ct, spacing, backend=self.s["measure_backend"]))

    def features3d(self) -> torch.Tensor | None:
        return torch.cat(self.f3d) if self.f3d else None

    def features2d(self) -> dict[str, torch.Tensor] | None:
        return {p: torch.cat(v) for p, v in self.f2d.items()} if self.f2d["xy"] else None


def _collect(items, desc: str, collector: _Collector, progress: bool) -> _Collector:
    for vid, ct, spacing in tqdm(items, desc=desc, disable=not progress):
        collector.add(vid, ct, spacing)
    return collector


def _require(value, name: str, part: str) -> None:
    if not value:
        raise ValueError(f"part {part!r} needs {name} (config key / --{name})")


def _check_inputs(
    parts: Sequence[str],
    synthetic_dir: str | Path | None,
    synthetic_glob: str,
    real_datalist: str | Path | None,
    real_split: str,
    training_split: str,
    max_volumes: int | None,
) -> None:
    """Find the volumes the parts read, and check the first of each set is a CT, before any network is loaded: an
    empty folder, a missing datalist or split, or label maps posing as CTs fail in one line at once."""
    streamed = [p for p in parts if p in ("measures", "fid", "fid_2p5d", "memorisation")]
    if "maps" in parts:
        anatomy_maps.sample_files(synthetic_dir)
        if real_datalist:  # "" or None: fractions without the training reference
            data.datalist_items(real_datalist, training_split, max_volumes)
    if "ctclip" in parts:
        data.read_ct(data.synthetic_paths(synthetic_dir, synthetic_glob, max_volumes)[0])
        if real_datalist is not None:
            data.datalist_items(real_datalist, real_split, max_volumes)
    if not streamed:
        return
    data.read_ct(data.synthetic_paths(synthetic_dir, synthetic_glob, max_volumes)[0])
    splits = ([real_split] if any(p != "memorisation" for p in streamed) else []) + (
        [training_split] if "memorisation" in parts else []
    )
    for split in dict.fromkeys(splits):
        data.read_ct(data.datalist_items(real_datalist, split, max_volumes)[0]["image"])


def _resolve_weights(
    parts: Sequence[str],
    medicalnet_weights: str | Path | None,
    resnet2d_weights: str | Path | None,
    large_files: str | Path | None,
    random_weights: bool,
) -> tuple[Path | None, Path | None]:
    """The feature networks' weight files (MedicalNet, 2D ResNet-50), found before anything is read: a missing file
    fails in one line naming where it was looked for and how to pass it. The memorisation audit alone goes on
    without MedicalNet (NCC only) unless a MedicalNet path was given (a given path that is absent is a mistake)."""
    if random_weights:
        return None, None
    path3d = path2d = None
    if "fid" in parts or "memorisation" in parts:
        try:
            path3d = features.resolve_weights("medicalnet_resnet50", medicalnet_weights, large_files)
        except features.MissingWeightsError:
            if "fid" in parts or medicalnet_weights is not None:
                raise
    if "fid_2p5d" in parts:
        path2d = features.resolve_weights("resnet50_2d", resnet2d_weights, large_files)
    return path3d, path2d


def _check_adherence_inputs(
    prompt_pairs: str | Path | None, adherence_dir: str | Path, num: int
) -> list[adherence.PromptPair]:
    """The prompt pairs, and ``num`` generated volumes for each of their prompts (the first one a CT), before the
    other parts run: a missing prompt or volume would otherwise stop the command after them."""
    pairs = adherence.load_pairs(prompt_pairs)
    volumes = adherence.folder_volumes(adherence_dir)
    found = [
        adherence.volumes_for(volumes, adherence_dir, p, num) for pair in pairs for p in (pair.finding, pair.negation)
    ]
    data.read_ct(found[0][0])
    return pairs


def run_evaluation(
    output_dir: str | Path,
    parts: Sequence[str] = DEFAULT_PARTS,
    synthetic_dir: str | Path | None = None,
    synthetic_glob: str = "**/*ct.nii.gz",
    real_datalist: str | Path | None = None,
    real_split: str = "validation",
    training_split: str = "training",
    max_volumes: int | None = None,
    medicalnet_weights: str | Path | None = None,
    resnet2d_weights: str | Path | None = None,
    large_files: str | Path | None = None,
    feature_size: int | None = None,
    slice_step: int = 4,
    backend: str = "classical",
    adherence_dir: str | Path | None = None,
    prompt_pairs: str | Path | None = None,
    adherence_num: int = 32,
    segmentation_dir: str | Path | None = None,
    agreement_num: int = 20,
    agreement_size: int = 64,
    random_weights: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    backend_options: dict | None = None,
    ctclip_weights: str | Path | None = None,
    ctclip_text_config: str | Path | None = None,
) -> dict:
    """Run the selected parts and write ``report.md``, ``report.json`` and figures into ``output_dir``.

    Args:
        output_dir: where the report and figures go (existing files are kept unless ``overwrite``).
        parts: some of :data:`PARTS`.
        synthetic_dir, synthetic_glob: generated CT files (``measures``, ``fid``, ``fid_2p5d``, ``memorisation``);
            for ``maps`` the samples with the inference writer's sidecars in ``synthetic_dir``.
        real_datalist, real_split, training_split: real volumes; ``training_split`` (with its maps) is also the
            reference of ``maps`` (None: no reference); ``real_split`` for the distances, measures and
            segmentation references, ``training_split`` for the memorisation audit.
        max_volumes: read at most this many volumes per set (quick runs).
        medicalnet_weights, resnet2d_weights, large_files: weights (see :mod:`scripts.evaluation.features`).
        feature_size: resize volumes to this edge before the 3D network (None: as they are).
        slice_step: keep every n-th slice for the 2.5D FID.
        backend: anatomy measure backend (``classical`` or ``totalsegmentator``); ``maps`` segments the generated
            CTs with the mask backend of that name (:mod:`scripts.anatomy`).
        adherence_dir, prompt_pairs, adherence_num: the prompt study (pairs file: default the paper's three).
        segmentation_dir: predictions ``<dir>/<with_report|without_report>/<case id>/<mask>.nii.gz``.
        agreement_num, agreement_size: phantom cases for the ``agreement`` part.
        random_weights: random feature networks (smoke tests only: the distances are then meaningless).
        overwrite: replace an existing report.
        progress: progress bars.
        backend_options: the measure backend's options, e.g. ``{"totalseg_python": "ENV/bin/python"}`` to run
            TotalSegmentator in its own environment (see :mod:`scripts.anatomy.totalseg_backend`).
        ctclip_weights, ctclip_text_config: the CT-CLIP checkpoint and CXR-BERT's config.json (with its vocab.txt)
            for ``ctclip``; default the ``ct_clip`` and ``cxr_bert_specialized`` entries of ``large_files``.
    """
    # from `monai.bundle run` these may be the words "true"/"false" (truthy strings): read them as flags first
    overwrite, progress = parse_bool(overwrite, "overwrite"), parse_bool(progress, "progress")
    random_weights = parse_bool(random_weights, "weights#random")
    parts = list(dict.fromkeys(parts))
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected some of {PARTS}")
    output_dir = Path(output_dir)
    refuse_existing([output_dir / name for name in ("report.md", "report.json")], overwrite)
    streamed = [p for p in parts if p in ("measures", "fid", "fid_2p5d", "memorisation")]
    for part in streamed:
        _require(synthetic_dir, "synthetic_dir", part)
    for part in streamed + [p for p in parts if p == "segmentation"]:
        _require(real_datalist, "real_datalist", part)
    if "maps" in parts:
        _require(synthetic_dir, "synthetic_dir", "maps")
    if "ctclip" in parts:
        _require(synthetic_dir, "synthetic_dir", "ctclip")
        if random_weights:
            raise ValueError("the ctclip part needs the CT-CLIP checkpoint; random weights are not offered for it")
        features.resolve_weights("ct_clip", ctclip_weights, large_files)
        features.resolve_weights("cxr_bert_specialized", ctclip_text_config, large_files)
    if "adherence" in parts:
        _require(adherence_dir, "adherence_dir", "adherence")
    if "segmentation" in parts:
        _require(segmentation_dir, "segmentation_dir", "segmentation")
    # every input is found and checked first (weights, measure backend, volumes, pairs, predictions), so a missing
    # or wrong one fails in one line before a network loads or a volume is measured
    path3d, path2d = _resolve_weights(parts, medicalnet_weights, resnet2d_weights, large_files, random_weights)
    measure_backend = None
    if "measures" in parts or "adherence" in parts:
        measure_backend = anatomy_measures.get_backend(backend, **(backend_options or {}))
        measure_backend.check(anatomy_measures.GROUPS)
    _check_inputs(parts, synthetic_dir, synthetic_glob, real_datalist, real_split, training_split, max_volumes)
    pairs = _check_adherence_inputs(prompt_pairs, adherence_dir, adherence_num) if "adherence" in parts else []
    conditions = segmentation.folder_conditions(segmentation_dir) if "segmentation" in parts else []
    settings = {"feature_size": feature_size, "slice_step": slice_step, "measure_backend": measure_backend}
    net3d = net2d = None
    if ("fid" in parts or "memorisation" in parts) and (random_weights or path3d is not None):
        net3d = features.medicalnet_resnet50(path3d, large_files, random_weights)
    if "fid_2p5d" in parts:
        net2d = features.resnet50_2d(path2d, large_files, random_weights)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net3d = net3d.to(device) if net3d is not None else None
    net2d = net2d.to(device) if net2d is not None else None
    results: dict[str, dict] = {}
    started = time.time()

    if streamed:
        synth = _collect(
            data.iter_synthetic(synthetic_dir, synthetic_glob, max_volumes),
            "synthetic volumes",
            _Collector(
                net3d if ("fid" in parts or "memorisation" in parts) else None,
                net2d,
                "memorisation" in parts,
                "measures" in parts,
                settings,
            ),
            progress,
        )
        need_real = [p for p in streamed if p != "memorisation"]
        real = None
        if need_real:
            real = _collect(
                data.iter_real(real_datalist, real_split, max_volumes),
                f"real volumes ({real_split})",
                _Collector(net3d if "fid" in parts else None, net2d, False, "measures" in parts, settings),
                progress,
            )
        if "measures" in parts:
            results["measures"] = {
                "backend": backend,
                "summary": {"synthetic": measures_summary(synth.rows), "real": measures_summary(real.rows)},
                "volumes": {"synthetic": dict(zip(synth.ids, synth.rows)), "real": dict(zip(real.ids, real.rows))},
            }
        if "fid" in parts or "fid_2p5d" in parts:
            out: dict = {
                "network": "MedicalNet ResNet-50" + (" (random weights)" if random_weights else ""),
                "n_synthetic": len(synth.ids),
                "n_real": len(real.ids),
                "notes": [],
            }
            if "fid" in parts:
                out["fid"] = distances.fid(synth.features3d(), real.features3d())
                mmd = distances.mmd(synth.features3d(), real.features3d())
                out["mmd"] = mmd["mmd"]
                if mmd["n"] < max(len(synth.ids), len(real.ids)):
                    out["notes"].append(f"MMD on {mmd['n']} volumes per set (the larger set subsampled, seed 0).")
            if "fid_2p5d" in parts:
                out["fid_2p5d"] = distances.fid_2p5d(synth.features2d(), real.features2d())
                out["notes"].append(f"2.5D FID on every {slice_step}th slice per plane.")
            results["distances"] = out
        if "memorisation" in parts:
            train = _collect(
                data.iter_real(real_datalist, training_split, max_volumes),
                f"training volumes ({training_split})",
                _Collector(net3d, None, True, False, settings),
                progress,
            )
            audit = memorisation.audit(
                synth.thumbnails,
                train.thumbnails,
                synth.ids,
                train.ids,
                synth.features3d(),
                train.features3d(),
                progress=False,
            )
            figure = memorisation.audit_figure(audit, output_dir / "memorisation_closest.png", overwrite=overwrite)
            audit["figures"] = [figure]
            audit["criteria"] = ["ncc"] + (["feature_distance"] if net3d is not None else [])
            results["memorisation"] = audit

    if "adherence" in parts:
        study = adherence.run_study(
            pairs,
            adherence.folder_generator(adherence_dir, check=True),
            adherence_num,
            measure=lambda ct, sp, measures: anatomy_measures.measure_ct(
                ct, sp, measures=measures, backend=measure_backend
            ),
            progress=progress,
        )
        figure = adherence.study_boxplot(study, output_dir / "adherence_boxplot.png", overwrite=overwrite)
        results["adherence"] = {"pairs": study, "figures": [figure]}

    if "maps" in parts:
        training = data.datalist_items(real_datalist, training_split, max_volumes) if real_datalist else None
        results["maps"] = anatomy_maps.evaluate_maps(
            synthetic_dir, training, backend=backend, limit=max_volumes, progress=progress
        )

    if "segmentation" in parts:
        cases = []
        for item in data.datalist_items(real_datalist, real_split, max_volumes):
            masks = {k: read_nifti(item[k])[0] for k in ("lobe", "airway", "vessel") if k in item}
            cases.append({"id": item["id"], **masks})
        results["segmentation"] = segmentation.run_segmentation_study(
            cases, segmentation.folder_predictor(segmentation_dir), conditions, progress
        )

    if "ctclip" in parts:
        model = ctclip.load_ctclip(ctclip_weights, ctclip_text_config, large_files, device)
        real_items = data.datalist_items(real_datalist, real_split, max_volumes) if real_datalist else []
        results["ctclip"] = ctclip.score_folder(
            model,
            ctclip.load_tokenizer(ctclip_text_config, large_files),
            synthetic_dir,
            synthetic_glob,
            real_items,
            max_volumes,
            progress,
        )
        del model

    if "agreement" in parts:
        results["agreement"] = agreement.phantom_agreement(
            agreement_num, agreement_size, backend=backend, progress=progress
        )

    # the header names only the inputs the selected parts read (config defaults of unused inputs would mislead)
    header = {"parts": ", ".join(parts)}
    if streamed or "ctclip" in parts or "maps" in parts:
        header["synthetic"] = f"{synthetic_dir} ({synthetic_glob})"
    if streamed or "segmentation" in parts or (("ctclip" in parts or "maps" in parts) and real_datalist):
        header["real"] = f"{real_datalist} ({real_split}; training split {training_split})"
    if measure_backend is not None:
        header["measure backend"] = measure_backend.name
    if "adherence" in parts:
        header["adherence"] = f"{adherence_dir} (pairs: {prompt_pairs or 'the paper three'})"
    if "segmentation" in parts:
        header["segmentation"] = str(segmentation_dir)
    header["time"] = f"{time.time() - started:.1f} s on {platform.node() or 'this machine'}"
    paths = write_report(results, output_dir, header, overwrite)
    return {"results": results, "paths": paths}
