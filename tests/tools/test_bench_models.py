"""tools/benchmark.py models: rows for the RPN and the head, the head's peer being the RPN of the same run."""
from __future__ import annotations

from tools.bench.models import CONFIGS, rows


def test_models_bench_rows(tmp_path):
    out = rows(repeats=1, threads=(1,), configs={"cpu": CONFIGS["cpu"]}, cache_dir=str(tmp_path))
    rpn, head = out
    assert rpn["op"] == "msf_rpn" and head["op"] == "msf_head" and rpn["threads"] == head["threads"] == 1
    assert rpn["median_ms"] > 0 and head["median_ms"] > 0
    assert head["peer_median_ms"] == rpn["median_ms"]
    assert head["params"]["proposals"] == 64 and len(head["params"]["points"]) == 4  # current + 3 earlier sweeps
