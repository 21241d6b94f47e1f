"""The network benchmark's pieces (behaviour only: timings belong to docs/benchmarks.md, not to tests)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_networks as bench


def test_forward_flops_are_counted_on_the_meta_device():
    ours = bench.forward_gflop("ours", 32)
    assert ours > 0 and bench.forward_gflop("ours", 64) == pytest.approx(8 * ours, rel=0.05)  # convolutions ∝ voxels
    assert bench.forward_gflop("monai_attn_all", 32) > 10 * bench.forward_gflop("monai_attn_last", 32)


def test_tiled_flops_count_every_overlapping_tile():
    whole, tiled = bench.forward_gflop("paper_sr", 128), bench.forward_gflop("paper_sr_tiled", 128)
    # 64-slice slabs at overlap 0.25 over 128 slices: 3 slabs = 192 slices for 128
    assert tiled == pytest.approx(whole * 192 / 128, rel=0.02)


def test_one_case_measures_only_the_steps_asked_and_the_table_shows_both_kinds():
    result = bench.run_case("ours", 16, "cpu", warmup=0, reps=1, steps=("sample",))
    assert result["sample_step_s"] > 0 and result["sample_peak_gb"] >= result["baseline_gb"]
    assert result["train_step_s"] is None and result["train_peak_gb"] is None
    failed = {"network": "paper_sr", "size": 256, "device": "cpu", "gflop": 1.0, "error": "out of memory"}
    rows = bench._table([{**result, "gflop": 2.0}, failed]).splitlines()
    assert rows[2].startswith("| ours | 7.80M | 16³ | cpu | 2.0 |") and rows[2].count("| - |") == 1
    assert "out of memory" in rows[3]


def test_gpu_suite_runs_sampling_and_training_cases_on_tiny_networks(tmp_path):
    from benchmarks import gpu_suite

    cases = ["bf16_dpmpp_17_7", "train_lowres_bf16", "train_sr_bf16"]
    assert gpu_suite.main(["--out", str(tmp_path), "--tiny", "--cases", *cases]) == 0
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["preset"] == "tiny" and [case["case"] for case in report["cases"]] == cases
    sampling, lowres, sr = report["cases"]
    assert sampling["network_evaluations"] == [17, 7] and sampling["seconds"] > 0 and sampling["write_s"] >= 0
    assert lowres["size"] == list(gpu_suite.TINY_SIZES["lowres"]) and lowres["step_s"] > 0
    assert sr["stage"] == "sr" and sr["volumes_per_s"] > 0
    assert gpu_suite.main(["--out", str(tmp_path), "--tiny", "--cases", "bf16_ddim", "--budget_s", "0"]) == 0
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["cases"] == [
        {"case": "bf16_ddim", "skipped": "time budget spent"}
    ]


def test_phantom_measures_prints_the_table_of_docs_phantom(capsys):
    from benchmarks import phantom_measures

    assert phantom_measures.main(["--num", "2", "--sizes", "32"]) == 0
    out = capsys.readouterr().out
    assert "| measure | 32³ (10 mm) | published adult |" in out
    for row in ("lungs (L)", "airway lumen (mL)", "vessels / lungs (%)", "deepest airway generation drawn"):
        assert f"| {row} |" in out
