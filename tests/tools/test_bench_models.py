"""tools/benchmark.py models: MSF rows for the RPN and the head (the head's peer being the RPN of the same run); a GaussianFusion row."""
from __future__ import annotations

from tools.bench.models import CONFIGS, GF_CONFIGS, rows


def test_models_bench_rows(tmp_path):
    out = rows(repeats=1, threads=(1,), configs={"cpu": CONFIGS["cpu"]}, cache_dir=str(tmp_path), gf_configs={})
    rpn, head = out
    assert rpn["op"] == "msf_rpn" and head["op"] == "msf_head" and rpn["threads"] == head["threads"] == 1
    assert rpn["median_ms"] > 0 and head["median_ms"] > 0
    assert head["peer_median_ms"] == rpn["median_ms"]
    assert head["params"]["proposals"] == 64 and len(head["params"]["points"]) == 4  # current + 3 earlier sweeps


def test_gaussian_fusion_bench_rows(tmp_path):
    (row,) = rows(repeats=1, threads=(1,), configs={}, gf_configs={"cpu": GF_CONFIGS["cpu"]}, cache_dir=str(tmp_path))
    assert row["op"] == "gaussian_fusion" and row["threads"] == 1 and row["peer"] is None
    assert row["median_ms"] > row["inputs_ms"] > 0
    p = row["params"]
    assert p["cameras"] == ["CAM_L0", "CAM_F0", "CAM_R0"] and p["points"] > 50_000 and p["weights"] == "random"
    assert (p["gaussians"], p["dim"], p["blocks"], p["lidar_grid"]) == (256, 64, 2, [128, 128])
