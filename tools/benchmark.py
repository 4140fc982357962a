#!/usr/bin/env python
"""Benchmarks, written as JSON rows; every figure is measured beside a peer in the same run.

    python tools/benchmark.py sim --json out/bench_sim.json
    python tools/benchmark.py ops --json out/bench_ops.json
    python tools/benchmark.py pipeline --json out/bench_pipeline.json
    python tools/benchmark.py models --json out/bench_models.json
    python tools/benchmark.py replay --json out/bench_replay.json

``sim``: one synthetic frame (HDL-64 sweep + 3 pinhole 640x360 + 4 fisheye 640x640 with depth)
on one core, against the 0.5 s budget; and the ray caster against a brute-force cast (no azimuth
culling) and Open3D's Embree ``RaycastingScene`` on the same rays and boxes.

``ops``: every custom op against its peer (spconv, mmcv, plain torch), 1 and 2 threads, on the
real KITTI sweeps (see tools/bench/ops_*.py).

``pipeline``: the same 124k-point synthetic LiDAR stream (preprocessing + voxelization) on Ray
actors and in process, interleaved in one run; frames/s and their ratio (tools/bench/pipeline.py).

``models``: latency per frame on CPU at the CPU and the paper config sizes: MSF (the RPN and the
head apart) and GaussianFusion (planning from 3 cameras + LiDAR, random weights) (tools/bench/models.py).

``replay``: a ROS1 bag and a ROS2 MCAP of 100 KITTI sweeps (120k points) at 10 Hz streamed through
``RosbagReader`` against raw reads of the same file; MB/s and the real-time factor (tools/bench/replay.py).

Rows: ``bench``, ``impl``, ``peer``, ``params``, ``median_ms``, ``peer_median_ms``, ``speedup``
(peer / ours), plus bench-specific fields. Medians over ``--repeats`` runs after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.bench.common import median_ms  # noqa: E402


def single_core() -> None:
    """Pin this process to one core and every thread pool to one thread."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def row(bench, impl, peer, params, ours_ms, peer_ms, **extra) -> dict:
    r = {"bench": bench, "impl": impl, "peer": peer, "params": params, "median_ms": round(ours_ms, 3),
         "peer_median_ms": None if peer_ms is None else round(peer_ms, 3),
         "speedup": None if peer_ms is None else round(peer_ms / ours_ms, 3)}
    r.update(extra)
    return r


def bench_sim(repeats: int) -> list[dict]:
    import numpy as np

    from perception.sim.raycast import cast_rays
    from perception.sim.render import scene_at
    from perception.sim.scene import SimConfig, SimSequence

    single_core()
    seq = SimSequence(11, SimConfig(frames=repeats + 2, layout="intersection", rigs=("navsim", "fisheye")))
    k = iter(range(len(seq)))
    seq.frame(next(k))  # warm-up (numba caches, camera ray tables)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = seq.frame(next(k))
        times.append((time.perf_counter() - t0) * 1e3)
    n_points = len(s.frame.lidar["LIDAR_TOP"])
    frame_ms = statistics.median(times)
    rows = [row("sim_frame", "perception.sim (numba ray casting, 1 core)", "budget 500 ms", {
        "lidar": "hdl64", "points": n_points, "cameras": "3 pinhole 640x360 + 4 fisheye 640x640 (+depth, semantic)",
    }, frame_ms, 500.0)]

    # ray casting alone: the LiDAR-like ray set of one frame, against the frame's boxes
    t = seq.time(1)
    scene = scene_at(seq.world, t)
    origin = seq.world_from_ego(t)[:3, 3] + [0, 0, 1.85]
    rng = np.random.default_rng(0)
    az = rng.uniform(-np.pi, np.pi, 130_000)
    el = np.radians(rng.uniform(-25, 2, 130_000))
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    ours = median_ms(lambda: cast_rays(origin[None], dirs, scene.prims, 120.0), repeats)
    brute = median_ms(lambda: cast_rays(origin[None], dirs, scene.prims, 120.0, nbins=1), max(3, repeats // 4))
    params = {"rays": len(dirs), "boxes": len(scene.prims)}
    rows.append(row("raycast", "azimuth-culled numba", "same kernel, no culling", params, ours, brute))
    try:
        o3d_ms = _open3d_raycast_ms(scene.prims, origin, dirs, repeats)
        rows.append(row("raycast", "azimuth-culled numba", "open3d RaycastingScene (Embree, its own threads)", params, ours, o3d_ms))
    except ImportError as e:
        print(f"open3d peer skipped: {e}", file=sys.stderr)
    return rows


def _open3d_raycast_ms(prims, origin, dirs, repeats: int) -> float:
    import numpy as np
    import open3d as o3d

    from perception.geometry.boxes import box_corners

    corners = box_corners(prims)  # [P, 8, 3]
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 6, 5], [4, 7, 6], [0, 4, 5], [0, 5, 1],
                      [1, 5, 6], [1, 6, 2], [2, 6, 7], [2, 7, 3], [3, 7, 4], [3, 4, 0]])
    verts = corners.reshape(-1, 3).astype(np.float32)
    tris = (faces[None] + 8 * np.arange(len(prims))[:, None, None]).reshape(-1, 3).astype(np.uint32)
    ground = np.array([[-1e4, -1e4, 0], [1e4, -1e4, 0], [1e4, 1e4, 0], [-1e4, 1e4, 0]], np.float32)
    verts = np.concatenate([verts, ground])
    g0 = len(verts) - 4
    tris = np.concatenate([tris, np.array([[g0, g0 + 1, g0 + 2], [g0, g0 + 2, g0 + 3]], np.uint32)])
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris))
    rays = o3d.core.Tensor(np.concatenate([np.broadcast_to(origin, dirs.shape), dirs], axis=1).astype(np.float32))
    return median_ms(lambda: scene.cast_rays(rays), repeats)


def bench_ops(repeats: int) -> list[dict]:
    """Every op against its peer (tools/bench/ops_*.py), at 1 and 2 threads."""
    import importlib

    rows = []
    for name in ("ops_voxel", "ops_bev", "ops_proposal"):
        try:
            module = importlib.import_module(f"tools.bench.{name}")
        except ImportError as e:
            print(f"benchmark {name} unavailable: {e}", file=sys.stderr)
            continue
        rows += [{"bench": "ops", **r} for r in module.rows(repeats=repeats, threads=(1, 2))]
    return rows


def bench_pipeline(repeats: int) -> list[dict]:
    """The LiDAR stream on Ray actors against the same stages in process (tools/bench/pipeline.py)."""
    from tools.bench.pipeline import ROUNDS, rows

    return rows(min(repeats, ROUNDS))


def bench_models(repeats: int) -> list[dict]:
    """MSF's RPN and head and GaussianFusion's latency per frame on CPU, CPU- and paper-sized (tools/bench/models.py)."""
    from tools.bench.models import rows

    return [{"bench": "models", **r} for r in rows(repeats)]


def bench_replay(repeats: int) -> list[dict]:
    """ROS recording ingest (120k-point clouds) against raw reads of the same file, and its real-time factor
    (tools/bench/replay.py)."""
    from tools.bench.replay import ROUNDS, rows

    return rows(min(repeats, ROUNDS))


BENCHES = {"sim": bench_sim, "ops": bench_ops, "pipeline": bench_pipeline, "models": bench_models, "replay": bench_replay}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=[*BENCHES, "all"])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    rows = []
    for name, fn in BENCHES.items():
        if args.which in (name, "all"):
            rows += fn(args.repeats)
    doc = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "python": platform.python_version()}, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2))
    for r in rows:
        peer = f" vs {r['peer']} {r['peer_median_ms']} ms (x{r['speedup']})" if r["peer_median_ms"] is not None else ""
        name = r.get("op", r["bench"]) + (f" [{r['threads']} thr]" if "threads" in r else "")
        print(f"{name:>28} {r['impl']}: {r['median_ms']} ms{peer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
