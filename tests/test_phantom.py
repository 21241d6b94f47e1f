"""Phantom cases: masks, measured truth and reports agree with what was asked for (64³ unless noted)."""

import re

import numpy as np
import pytest
from scipy import ndimage

from scripts.phantom import SEVERITIES, TYPES, FindingSpec, generate_case
from scripts.phantom.findings import CTR_RANGES, EFFUSION_ML
from scripts.phantom.tissues import Tissue

_NEGATION = re.compile(r"\b(no|negative for|not|clear)\b")


def sentences_about(report: str, *words: str) -> list[str]:
    """The sentences of a report (lower case) that mention any of ``words``."""
    return [s for s in re.split(r"(?<=\.)\s+|\n", report.lower()) if any(w in s for w in words)]


def negates(report: str, *words: str) -> bool:
    """Every sentence that mentions one of ``words`` is a negation, and there is one."""
    about = sentences_about(report, *words)
    return bool(about) and all(_NEGATION.search(s) for s in about)


@pytest.fixture(scope="module")
def normal():
    return generate_case(64, seed=11, findings="normal")


@pytest.fixture(scope="module")
def right_effusion():
    return generate_case(64, seed=12, findings="effusion:right:large")


def test_normal_case_negates_findings_and_has_no_fluid(normal):
    truth, report = normal.truth, normal.report.lower()
    assert truth["findings"] == []
    assert truth["effusion_ml"] == {"left": 0.0, "right": 0.0}
    assert truth["cardiothoracic_ratio"] < 0.5
    assert truth["laa950_percent"] < 1.0
    assert negates(report, "effusion", "pleural")
    assert "cardiomegaly" not in report.replace("no cardiomegaly", "").replace("negative for cardiomegaly", "")
    assert not sentences_about(report, "enlarged", "enlargement") or negates(report, "enlarged", "enlargement")
    assert report.startswith("findings:") and "\nimpression:" in report


def test_large_right_effusion_is_on_the_right_only_and_reported(right_effusion):
    truth = right_effusion.truth
    assert truth["effusion_ml"]["right"] >= EFFUSION_ML["large"][0]
    assert truth["effusion_ml"]["left"] == 0.0
    report = right_effusion.report.lower()
    impression = report.split("impression:")[1]
    assert (
        re.search(r"(large|extensive)(-volume)? right|right (large|extensive)", impression)
        and "pleural effusion" in impression
    )
    assert negates(report.split("impression:")[0], "left")  # the other side is negated
    # RAS: the patient's right is +x; fluid is dependent (posterior, -y) and outside the lobes
    fluid = right_effusion.tissue == Tissue.EFFUSION
    xs, ys, _ = np.nonzero(fluid)
    assert xs.min() > right_effusion.ct_hu.shape[0] // 2 - 2
    lung_y = np.nonzero(right_effusion.lobe >= 3)[1]
    assert ys.mean() < lung_y.mean()
    assert not (fluid & (right_effusion.lobe > 0)).any()
    assert 0 <= np.median(right_effusion.ct_hu[fluid]) <= 30


def test_effusion_volume_grows_with_severity():
    volumes = [
        generate_case(32, 5, f"effusion:left:{s}").truth["effusion_ml"]["left"] for s in ("small", "moderate", "large")
    ]
    assert volumes[0] < volumes[1] < volumes[2]
    assert EFFUSION_ML["small"][0] <= volumes[0] < EFFUSION_ML["small"][1]


def test_cardiomegaly_raises_ctr_and_is_reported(normal):
    case = generate_case(64, seed=11, findings="cardiomegaly:large")
    assert case.truth["cardiothoracic_ratio"] >= CTR_RANGES["large"][0]
    assert case.truth["cardiothoracic_ratio"] > normal.truth["cardiothoracic_ratio"] + 0.15
    impression = case.report.lower().split("impression:")[1]
    assert re.search(r"(severe|marked)\w* (cardiomegaly|cardiac enlargement)|cardiomegaly, (severe|marked)", impression)
    t = case.truth
    assert t["cardiothoracic_ratio"] == pytest.approx(t["heart_width_mm"] / t["thorax_width_mm"], abs=1e-3)
    # the body is the same subject: only the heart changed
    assert case.truth["anatomy"]["cav_a"] == normal.truth["anatomy"]["cav_a"]


def test_emphysema_raises_laa(normal):
    case = generate_case(64, seed=11, findings="emphysema:bilateral:moderate")
    assert case.truth["laa950_percent"] > 10.0 > normal.truth["laa950_percent"]
    assert "emphysema" in case.report.lower()
    laa = (case.ct_hu < -950) & (case.lobe > 0)
    assert 100 * laa.sum() / (case.lobe > 0).sum() == pytest.approx(case.truth["laa950_percent"], abs=1e-2)


def test_consolidation_nodule_and_bullae_are_placed_where_asked():
    case = generate_case(64, seed=3, findings="consolidation:rll:large,nodule:lul:moderate,bullae:left:large")
    consolidation = case.tissue == Tissue.CONSOLIDATION
    assert consolidation.any() and set(np.unique(case.lobe[consolidation])) == {5}
    nodule = case.tissue == Tissue.NODULE
    assert nodule.any() and set(np.unique(case.lobe[nodule])) == {1}
    assert np.median(case.ct_hu[consolidation]) > 0 and np.median(case.ct_hu[nodule]) > 0
    assert case.truth["laa950_percent"] > 0.5
    report = case.report.lower()
    assert "right lower lobe" in report and "left upper lobe" in report and "bulla" in report


def test_lobes_present_and_on_the_correct_side(normal):
    lobe = normal.lobe
    assert set(np.unique(lobe)) == {0, 1, 2, 3, 4, 5}
    centre = lobe.shape[0] / 2
    for label in (1, 2, 3, 4, 5):
        x, y, z = (c.mean() for c in np.nonzero(lobe == label))
        assert (x > centre) == (label >= 3), f"lobe {label} on the wrong side (RAS: left lung at -x)"
    zc = {label: np.nonzero(lobe == label)[2].mean() for label in (1, 2, 3, 4, 5)}
    assert zc[1] > zc[2] and zc[3] > zc[4] and zc[3] > zc[5]
    yc = {label: np.nonzero(lobe == label)[1].mean() for label in (3, 4, 5)}
    assert yc[4] > yc[5]  # the middle lobe is anterior
    lung_hu = normal.ct_hu[normal.tissue == Tissue.LUNG]
    assert -900 < np.median(lung_hu) < -800


def test_airway_is_one_tree_inside_trachea_and_lungs(normal):
    airway = normal.airway.astype(bool)
    _, count = ndimage.label(airway, structure=np.ones((3, 3, 3)))
    assert count == 1
    assert (normal.ct_hu[airway] < -900).mean() > 0.95
    inside = normal.tissue[airway]
    assert set(np.unique(inside)) == {Tissue.AIRWAY_LUMEN}
    # the lumen is not part of a lobe; away from the lobes lie only the trachea and main bronchi, near the midline
    near_lung = ndimage.binary_dilation(normal.lobe > 0)
    x, _, z = np.nonzero(airway & ~near_lung)
    x_mm = normal.affine[0, 0] * x + normal.affine[0, 3] - normal.anatomy.cx
    assert np.abs(x_mm).max() < 0.45 * normal.anatomy.cav_a
    # inside the lungs: a real tree, not just the trachea
    assert (airway & near_lung).sum() > 0.3 * airway.sum()


def test_vessels_lie_in_lungs_or_mediastinum(normal):
    vessel = normal.vessel.astype(bool)
    assert vessel.sum() * normal.spacing**3 / 1000 > 20
    allowed = (normal.lobe > 0) | np.isin(normal.tissue, [Tissue.PULM_VESSEL, Tissue.MEDIASTINUM])
    assert allowed[vessel].all()
    assert (normal.lobe[vessel] > 0).mean() > 0.5
    assert not (vessel & normal.airway.astype(bool)).any()
    assert 0 < np.median(normal.ct_hu[vessel]) < 80


def test_realistic_tissue_values(normal):
    ct, t = normal.ct_hu, normal.tissue
    assert np.median(ct[t == Tissue.AIR]) == pytest.approx(-1000, abs=10)
    assert np.median(ct[t == Tissue.FAT]) == pytest.approx(-100, abs=15)
    assert np.median(ct[t == Tissue.MUSCLE]) == pytest.approx(45, abs=15)
    assert np.median(ct[np.isin(t, [Tissue.BONE, Tissue.MARROW])]) > 200
    assert np.median(ct[t == Tissue.HEART]) == pytest.approx(40, abs=10)


def test_same_seed_same_case_and_different_seed_differs(normal):
    again = generate_case(64, seed=11, findings=FindingSpec.normal())
    np.testing.assert_array_equal(again.ct_hu, normal.ct_hu)
    np.testing.assert_array_equal(again.lobe, normal.lobe)
    assert again.report == normal.report
    other = generate_case(64, seed=99, findings="normal")
    assert not np.array_equal(other.ct_hu, normal.ct_hu)
    assert other.truth["anatomy"] != normal.truth["anatomy"]


def test_random_mix_contains_normals_and_every_finding():
    spec = FindingSpec.parse(None)
    draws = [spec.resolve(np.random.default_rng(i)) for i in range(300)]
    assert 0.2 < sum(d == [] for d in draws) / len(draws) < 0.4
    assert {f.type for d in draws for f in d} == set(TYPES)
    assert all(f.severity in SEVERITIES for d in draws for f in d)
