"""Generated volumes in the VLM3D text-to-CT challenge's submission layout: one ``.nii.gz`` per prompt.

The challenge hands out ``prompts.json``, a list of ``{"input_image_name": "<name>.mha", "report": "..."}``, and
pairs each submitted volume with its ground truth by file name (forithmus/VLM3D-Dockers, ``ctgen_example_docker``
``process.py`` l.146-247 and ``ctgen_evaluation/evaluation.py`` l.137-168). Two steps:

1. generate one sample per prompt: ``python -m monai.bundle run inference --config_file configs/inference.json
   --prompt_file prompts.json --output_dir outputs/vlm3d`` (each sample is named after its ``input_image_name``);
2. ``python -m scripts.evaluation submission --prompts prompts.json --samples outputs/vlm3d --out
   outputs/vlm3d_submission``: each prompt's CT resampled (trilinear, same field of view and orientation) to the
   template's spacing, written as ``<name>.nii.gz`` (int16 HU, marked synthetic in its header), optionally zipped.

The template's spacing is the ``--template`` volume's, else ``--spacing`` (default 1 mm isotropic, what the
challenge's example generator writes). The evaluators read the spacing from the header and resample themselves.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing

from scripts.data.io import atomic_path, read_nifti, refuse_existing, write_nifti
from scripts.evaluation.anatomy_measures import spacing_of
from scripts.inference.prompts import image_stem, read_prompts
from scripts.inference.writer import SYNTHETIC_DESCRIPTION
from scripts.text.reports import read_text_file

DEFAULT_SPACING = (1.0, 1.0, 1.0)


def _submission_names(prompts_file: Path) -> list[str]:
    """The file stem each prompt's volume is submitted under, in the file's order."""
    entries = json.loads(read_text_file(prompts_file))
    if isinstance(entries, dict):
        entries = entries.get("prompts", [])
    names = [image_stem(e) if isinstance(e, dict) else "" for e in entries]
    missing = [i for i, name in enumerate(names) if not name]
    if missing:
        raise ValueError(f"{prompts_file} item {missing[0]}: no input_image_name; the challenge pairs files by it")
    if len(set(names)) != len(names):
        raise ValueError(f"{prompts_file}: an input_image_name appears twice; each prompt needs its own file")
    return names


def write_submission(
    prompts: str | os.PathLike,
    samples: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    template: str | os.PathLike | None = None,
    zip_name: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write one ``<input_image_name stem>.nii.gz`` per prompt of ``prompts`` into ``out``.

    Args:
        prompts: the challenge's ``prompts.json``.
        samples: the inference output folder (``<prompt id>_seed<seed>_ct.nii.gz`` with its sidecar).
        out: the submission folder.
        seed: which sample of each prompt (the inference run's ``--seed``).
        spacing: target voxel size in mm (x, y, z); default the template's, else 1 mm isotropic.
        template: a volume whose spacing the submission takes.
        zip_name: also write ``out/<zip_name>`` holding the volumes (e.g. ``predictions.zip``).
        overwrite: replace existing files.

    Raises:
        FileNotFoundError: a prompt without a finished sample (all of them are checked before anything is written).
        ValueError: a sample made from another report than its prompt's, or bad arguments.
    """
    prompts, samples, out = Path(prompts), Path(samples), Path(out)
    names = _submission_names(prompts)
    reports = read_prompts(prompt_file=prompts)
    if spacing is not None and template is not None:
        raise ValueError("give --spacing or --template, not both")
    target = tuple(spacing_of(read_nifti(template)[1])) if template is not None else tuple(spacing or DEFAULT_SPACING)
    if len(target) != 3 or min(target) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {list(target)}")
    jobs, missing = [], []
    for name, prompt in zip(names, reports):
        ct = samples / f"{prompt.id}_seed{seed}_ct.nii.gz"
        sidecar = samples / f"{prompt.id}_seed{seed}.json"
        if not (ct.is_file() and sidecar.is_file()):
            missing.append(ct.name)
            continue
        made_from = json.loads(read_text_file(sidecar)).get("prompt")
        if " ".join(str(made_from).split()) != " ".join(prompt.text.split()):
            raise ValueError(f"{sidecar}: the sample was generated from another report than prompt {name}'s")
        jobs.append((name, ct))
    if missing:
        raise FileNotFoundError(
            f"{samples}: {len(missing)} of {len(names)} prompts have no finished sample (e.g. {missing[0]}); generate "
            f"them with `python -m monai.bundle run inference --config_file configs/inference.json --prompt_file "
            f"{prompts} --seed {seed} --output_dir {samples}`"
        )
    outputs = [out / f"{name}.nii.gz" for name, _ in jobs]
    refuse_existing(outputs + ([out / zip_name] if zip_name else []), overwrite, "pass --overwrite to replace them")
    resample = Spacing(pixdim=target, mode="bilinear", padding_mode="border", scale_extent=True)  # same extent
    for (_, ct_path), path in zip(jobs, outputs):
        ct, affine = read_nifti(ct_path)
        volume = resample(MetaTensor(torch.as_tensor(np.asarray(ct, dtype=np.float32))[None], affine=affine))
        hu = np.rint(volume[0].numpy()).astype(np.int16)
        write_nifti(path, hu, volume.affine.numpy(), "int16", overwrite, SYNTHETIC_DESCRIPTION)
    if zip_name:
        with atomic_path(out / zip_name, overwrite) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for path in outputs:
                archive.write(path, path.name)  # .nii.gz is compressed already
    return outputs


__all__ = ["DEFAULT_SPACING", "write_submission"]
