"""The network benchmark's pieces (behaviour only: timings belong to docs/benchmarks.md, not to tests)."""

from __future__ import annotations

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
