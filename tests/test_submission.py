"""The VLM3D text-to-CT submission layout: prompts.json → one .nii.gz per prompt, named after its input_image_name."""

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from scripts.data.io import write_nifti
from scripts.evaluation.__main__ import main
from scripts.evaluation.submission import write_submission
from scripts.inference.prompts import read_prompts
from scripts.inference.writer import SYNTHETIC_DESCRIPTION

PROMPTS = [
    {"input_image_name": "65f43b26-34fd-447a-9462-faf4d7b139ed.mha", "report": "Large right pleural effusion."},
    {"input_image_name": "valid_2_a_1.nii.gz", "report": "No effusion. Normal heart size."},
]


@pytest.fixture
def generated(tmp_path):
    """Samples as `run inference --prompt_file prompts.json` names them, on a 2 mm grid with its own origin."""
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    affine = np.array([[2.0, 0, 0, -31], [0, 2.0, 0, -29], [0, 0, 2.0, -15], [0, 0, 0, 1]])
    for prompt in read_prompts(prompt_file=tmp_path / "prompts.json"):
        ct = np.full((32, 30, 16), -1000, dtype=np.int16)
        ct[8:24, 8:22, 4:12] = 40
        write_nifti(tmp_path / "samples" / f"{prompt.id}_seed0_ct.nii.gz", ct, affine, "int16")
        (tmp_path / "samples" / f"{prompt.id}_seed0.json").write_text(json.dumps({"prompt": prompt.text}))
    return tmp_path


def test_prompt_ids_come_from_input_image_names(generated):
    ids = [p.id for p in read_prompts(prompt_file=generated / "prompts.json")]
    assert ids == ["65f43b26-34fd-447a-9462-faf4d7b139ed", "valid_2_a_1"]


def test_one_volume_per_prompt_on_the_target_spacing_in_the_same_place(generated):
    out = generated / "submission"
    written = write_submission(generated / "prompts.json", generated / "samples", out, zip_name="predictions.zip")
    assert [p.name for p in written] == ["65f43b26-34fd-447a-9462-faf4d7b139ed.nii.gz", "valid_2_a_1.nii.gz"]
    image = nib.load(str(written[0]))
    assert image.get_data_dtype() == np.int16 and image.shape == (64, 60, 32)
    np.testing.assert_allclose(np.abs(np.diag(image.affine)[:3]), [1.0, 1.0, 1.0])
    assert SYNTHETIC_DESCRIPTION[:40] in image.header["descrip"].tobytes().decode(errors="ignore")
    source = nib.load(str(generated / "samples" / "valid_2_a_1_seed0_ct.nii.gz"))
    world = source.affine @ np.array([16.0, 15.0, 8.0, 1.0])  # inside the block in the source
    index = np.rint(np.linalg.solve(image.affine, world)[:3]).astype(int)
    assert np.asarray(image.dataobj)[tuple(index)] == 40
    with zipfile.ZipFile(out / "predictions.zip") as archive:
        assert sorted(archive.namelist()) == sorted(p.name for p in written)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        write_submission(generated / "prompts.json", generated / "samples", out)
    template = write_nifti(generated / "template.nii.gz", np.zeros((4, 4, 4)), np.diag([0.5, 0.5, 1.5, 1]), "int16")
    (again,) = write_submission(generated / "prompts.json", generated / "samples", generated / "t", template=template)[
        1:
    ]
    np.testing.assert_allclose(np.abs(np.diag(nib.load(str(again)).affine)[:3]), [0.5, 0.5, 1.5])


def test_missing_or_mismatched_samples_are_refused_before_writing(generated, capsys):
    (generated / "samples" / "valid_2_a_1_seed0_ct.nii.gz").unlink()
    with pytest.raises(SystemExit, match="1 of 2 prompts have no finished sample .*valid_2_a_1_seed0_ct.nii.gz"):
        main(["submission", "--prompts", str(generated / "prompts.json"), "--samples", str(generated / "samples"),
              "--out", str(generated / "out")])  # fmt: skip
    assert not (generated / "out").exists()
    (generated / "samples" / "65f43b26-34fd-447a-9462-faf4d7b139ed_seed0.json").write_text('{"prompt": "Other."}')
    with pytest.raises(ValueError, match="generated from another report"):
        write_submission(generated / "prompts.json", generated / "samples", generated / "out")
    (generated / "bad.json").write_text(json.dumps([{"report": "x"}]))
    with pytest.raises(ValueError, match="item 0: no input_image_name"):
        write_submission(generated / "bad.json", generated / "samples", generated / "out")
