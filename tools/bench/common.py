"""Timing helpers shared by every benchmark: medians of wall-clock runs and JSON rows."""
from __future__ import annotations

import statistics
import time


def median_ms(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after ``warmup`` runs.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before and after each timed run.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def op_row(op, impl, peer, params, ours_ms, peer_ms, threads, **extra) -> dict:
    """One ``tools/benchmark.py ops`` row; ``speedup`` = peer time / our time (> 1: we are faster)."""
    r = {"op": op, "impl": impl, "peer": peer, "params": params, "median_ms": round(ours_ms, 3),
         "peer_median_ms": None if peer_ms is None else round(peer_ms, 3),
         "speedup": None if peer_ms is None else round(peer_ms / ours_ms, 3), "threads": threads}
    r.update(extra)
    return r
