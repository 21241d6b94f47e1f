"""Studies: the one-tailed t-test, the Dice protocol of Table 5, and the memorisation audit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage, stats

from scripts.evaluation import adherence, memorisation, segmentation

# --- t-test ------------------------------------------------------------------------------------------------------
FINDING = [1.9, 1.4, 2.2, 1.7, 1.1, 2.5]
NEGATION = [0.0, 0.3, 0.1, 0.4, 0.0, 0.2, 0.5]


def test_t_test_matches_scipy_and_the_textbook_formula():
    result = adherence.one_tailed_ttest(FINDING, NEGATION)
    a, b = np.array(FINDING), np.array(NEGATION)
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    t = (a.mean() - b.mean()) / math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    assert result["t"] == pytest.approx(t, rel=1e-12)
    assert result["p"] == pytest.approx(stats.t.sf(t, len(a) + len(b) - 2), rel=1e-9)
    assert result["p"] == pytest.approx(stats.ttest_ind(a, b, alternative="greater").pvalue, rel=1e-12)
    # the other direction and Welch's variant
    assert adherence.one_tailed_ttest(FINDING, NEGATION, "less")["p"] == pytest.approx(1 - result["p"], rel=1e-9)
    welch = adherence.one_tailed_ttest(FINDING, NEGATION, equal_var=False)
    assert welch["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def test_t_test_on_groups_without_spread():
    assert adherence.one_tailed_ttest([2.0, 2.0], [0.0, 0.0]) == {"t": math.inf, "p": 0.0}
    assert adherence.one_tailed_ttest([0.0, 0.0], [0.0, 0.0])["p"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        adherence.one_tailed_ttest([1.0], [0.0, 1.0])


def test_prompt_pairs_are_checked():
    pairs = adherence.load_pairs()
    assert [p.measure for p in pairs] == ["effusion_ml", "laa950_percent", "cardiothoracic_ratio"]
    with pytest.raises(ValueError, match="unknown measure"):
        adherence.load_pairs([{"name": "x", "finding": "a", "negation": "b", "measure": "volume"}])


def test_study_with_a_fake_generator_writes_table_json_and_plot(tmp_path):
    """A generator whose finding prompt adds a known amount: the study must recover the means and the test."""
    rng = np.random.default_rng(0)

    def generate(prompt: str, num: int, seed: int):
        return [
            (np.full((4, 4, 4), 1.0 if "large" in prompt else 0.0) + rng.normal(0, 0.1), (1, 1, 1)) for _ in range(num)
        ]

    def measure(ct_hu, spacing, measures):
        return {measures[0]: float(ct_hu.mean())}

    pairs = adherence.load_pairs(
        [{"name": "effusion", "finding": "large effusion", "negation": "no effusion", "measure": "effusion_ml"}]
    )
    results = adherence.run_study(pairs, generate, num=5, seed=0, measure=measure, progress=False)
    r = results[0]
    assert r["finding"]["n"] == r["negation"]["n"] == 5
    assert r["finding"]["mean"] == pytest.approx(1.0, abs=0.15) and r["negation"]["mean"] == pytest.approx(0, abs=0.15)
    assert r["p"] == pytest.approx(
        stats.ttest_ind(r["values"]["finding"], r["values"]["negation"], alternative="greater").pvalue
    )
    assert r["p"] < 1e-4
    table = adherence.study_markdown(results)
    assert "| effusion | effusion_ml |" in table and "finding > negation" in table
    json.dumps(results)  # JSON-ready
    png = adherence.study_boxplot(results, tmp_path / "adherence.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_study_counts_unmeasurable_volumes_and_tests_the_rest(tmp_path):
    """A volume the measure cannot read (NaN, e.g. no heart found) is counted, and left out of mean and test."""
    finding, negation = [0.6, float("nan"), 0.62, 0.64], [0.45, 0.5, float("nan"), float("nan")]

    def generate(prompt: str, num: int, seed: int):
        return [(np.full((2, 2, 2), v), (1, 1, 1)) for v in (finding if "cardiomegaly" in prompt else negation)]

    def measure(ct_hu, spacing, measures):
        return {measures[0]: float(ct_hu.flat[0])}

    pairs = adherence.load_pairs(
        [{"name": "ctr", "finding": "cardiomegaly", "negation": "normal heart", "measure": "cardiothoracic_ratio"}]
    )
    r = adherence.run_study(pairs, generate, num=4, measure=measure, progress=False)[0]
    assert (r["finding"]["n"], r["finding"]["generated"], r["negation"]["n"], r["negation"]["generated"]) == (
        3,
        4,
        2,
        4,
    )
    assert r["finding"]["mean"] == pytest.approx(0.62)
    assert r["p"] == pytest.approx(stats.ttest_ind([0.6, 0.62, 0.64], [0.45, 0.5], alternative="greater").pvalue)
    assert "| 3/4, 2/4 |" in adherence.study_markdown([r])
    adherence.study_boxplot([r], tmp_path / "box.png")
    negation[1] = float("nan")  # one measurable negation left: no test, but still a report
    r = adherence.run_study(pairs, generate, num=4, measure=measure, progress=False)[0]
    assert r["negation"]["n"] == 1 and np.isnan(r["p"]) and np.isnan(r["negation"]["std"])
    assert "| 3/4, 1/4 |" in adherence.study_markdown([r])


def test_folder_generator_groups_volumes_by_sidecar_prompt(tmp_path):
    from scripts.data.io import ras_affine, write_json, write_nifti

    affine = ras_affine((2, 2, 3), (8, 8, 8))
    for seed, prompt in [(10, "no effusion"), (2, "no effusion"), (0, "large  effusion"), (1, "no effusion")]:
        write_nifti(tmp_path / f"seed{seed}.nii.gz", np.full((8, 8, 8), seed, np.int16), affine, "int16")
        write_json(tmp_path / f"seed{seed}.json", {"prompt": prompt, "seed": seed})
    generate = adherence.folder_generator(tmp_path)
    volumes = generate("no effusion", 2, 0)
    assert [float(v.mean()) for v, _ in volumes] == [1.0, 2.0]  # the lowest seeds, not seed10 before seed2
    assert volumes[0][1] == pytest.approx((2, 2, 3))
    assert len(generate("large effusion", 1, 0)) == 1  # whitespace-insensitive
    with pytest.raises(ValueError, match="3 volumes"):
        generate("no effusion", 4, 0)
    with pytest.raises(KeyError, match="no volumes"):
        generate("cardiomegaly", 1, 0)


# --- Dice --------------------------------------------------------------------------------------------------------
def test_dice_on_known_masks():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[0:4] = True  # 400 voxels
    b[2:6] = True  # 400 voxels, 200 shared
    assert segmentation.dice(a, b) == pytest.approx(0.5)
    assert segmentation.dice(a, a) == 1.0
    assert segmentation.dice(np.zeros(3), np.zeros(3)) == 1.0
    assert segmentation.dice(a, ~a) == 0.0
    lobe_ref = np.repeat(np.arange(6), 2)[:, None, None] * np.ones((12, 2, 2), np.uint8)
    lobe_pred = lobe_ref.copy()
    lobe_pred[lobe_pred == 5] = 4  # lobe 5 lost into lobe 4: Dice 0 and 2·4/(8+4)
    result = segmentation.mask_dice({"lobe": lobe_pred, "airway": a}, {"lobe": lobe_ref, "airway": b})
    assert result["lobe_5"] == 0.0 and result["lobe_4"] == pytest.approx(8 / 12)
    assert result["lobe"] == pytest.approx((3 + 8 / 12) / 5)
    assert result["airway"] == pytest.approx(0.5) and "vessel" not in result


def test_segmentation_study_with_and_without_report(tmp_path):
    """A fake joint model that is exact with the report and loses a rim without it; also via written files."""
    from scripts.data.io import ras_affine, write_nifti

    ref = np.zeros((16, 16, 16), np.uint8)
    ref[4:12, 4:12, 4:12] = 1
    cases = [
        {
            "id": f"c{i}",
            "ct_hu": np.zeros_like(ref),
            "spacing": (1, 1, 1),
            "report": "text",
            "airway": ref,
            "vessel": ref,
        }
        for i in range(2)
    ]

    def segment(ct_hu, spacing, report):
        mask = ref if report else ndimage.binary_erosion(ref).astype(np.uint8)
        return {"airway": mask, "vessel": mask}

    result = segmentation.run_segmentation_study(cases, segmentation.model_predictor(segment), progress=False)
    eroded = 2 * 216 / (216 + 512)
    assert result["summary"]["with_report"]["airway"]["mean"] == 1.0
    assert result["summary"]["without_report"]["airway"]["mean"] == pytest.approx(eroded)
    table = segmentation.segmentation_markdown(result)
    assert "| with report | 1.000 ± 0.000 | — | 1.000 ± 0.000 |" in table
    for case in cases:  # the same predictions, written to disk and read back
        for condition, report in (("with_report", "text"), ("without_report", None)):
            for key, mask in segment(None, None, report).items():
                path = tmp_path / condition / case["id"] / f"{key}.nii.gz"
                write_nifti(path, mask, ras_affine((1, 1, 1), mask.shape), "uint8")
    conditions = segmentation.folder_conditions(tmp_path)
    from_files = segmentation.run_segmentation_study(cases, segmentation.folder_predictor(tmp_path), conditions, False)
    assert from_files["summary"] == result["summary"]


# --- memorisation ------------------------------------------------------------------------------------------------
def _blobs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (ndimage.gaussian_filter(rng.standard_normal((24, 24, 24)), 2.5) * 3000 - 500).astype(np.float32)
        for _ in range(n)
    ]


def test_audit_flags_a_planted_copy(tmp_path):
    training = _blobs(6, seed=1)
    # two scans of one patient: the closest real-real pair is close, so only a true copy beats it
    training[5] = training[0] + np.random.default_rng(3).normal(0, 200, training[0].shape).astype(np.float32)
    synthetic = _blobs(4, seed=2)
    synthetic.insert(2, training[3].copy())  # an exact copy of training volume 3
    train_ids = [f"t{i}" for i in range(6)]
    synth_ids = [f"s{i}" for i in range(5)]
    feats = lambda vs: np.stack([memorisation.thumbnail(v, 6).ravel() for v in vs])  # noqa: E731
    result = memorisation.audit(
        synthetic, training, synth_ids, train_ids, feats(synthetic), feats(training), size=16, progress=False
    )
    assert result["flagged"] == ["s2"]
    top = result["pairs"][0]
    assert top["synthetic"] == "s2" and top["nearest_by_ncc"] == "t3" and top["nearest_by_feature"] == "t3"
    assert top["ncc"] == pytest.approx(1.0) and top["feature_distance"] == pytest.approx(0.0, abs=1e-9)
    assert result["threshold"]["ncc"] < 0.99
    assert "**yes**" in memorisation.audit_markdown(result)
    png = memorisation.audit_figure(result, tmp_path / "closest.png", top=2)
    assert png.read_bytes()[:4] == b"\x89PNG"
    # without features the NCC criterion alone still flags it
    assert memorisation.audit(synthetic, training, size=16, progress=False)["flagged"] == ["2"]


def test_pipeline_generator_decodes_the_pipeline_output():
    """The adapter for the inference pipeline: network layout and [-1, 1] in, RAS HU and spacing out."""
    import torch

    from scripts.conventions import MEDSYN_MONAI
    from scripts.inference.pipeline import PipelineOutput
    from scripts.phantom import generate_case

    case = generate_case(32, seed=0, findings="normal")
    encoded = np.stack(
        [MEDSYN_MONAI.encode(n, getattr(case, "ct_hu" if n == "ct" else n)) for n in ("ct", "lobe", "airway", "vessel")]
    )
    seeds = []

    def pipeline(prompt, seed):
        seeds.append(seed)
        return PipelineOutput(lowres=torch.as_tensor(MEDSYN_MONAI.to_network(encoded).copy()), volume=None)

    volumes = adherence.pipeline_generator(pipeline, spacing=(2.5, 2.5, 2.5))("no effusion", 2, 7)
    assert seeds == [7, 8]
    ct, spacing = volumes[0]
    assert spacing == [10.0, 10.0, 10.0]
    assert np.abs(ct - np.clip(case.ct_hu, -1024, 600)).max() <= 1
