"""Benchmark: the streaming pipeline on Ray against the same stages in process, one run, one stream.

The stream: ``FRAMES`` synthetic HDL-64 sweeps (~124k points each, per-point time, ego poses),
rendered once before timing. The stages: LiDAR preprocessing (non-finite filter, range crop,
ego-motion compensation, 3-sweep accumulation) and hard voxelization (0.2 m x 0.2 m x 0.2 m over
+-50 m x [-3, 5) m, 10 points a voxel). Each mode streams the frames ``ROUNDS`` times (a fresh stage
per round, so multi-sweep state starts empty), the two modes' rounds interleaved so both see the
same load; frames/s are over all rounds. The Ray run starts its actor before timing (actor
start-up is a one-off, reported separately). The Ray output stays in the object store (where the
next actor would read it); the in-process output is handed to no sink either.

    python -m tools.bench.pipeline        # from the repository root
"""
from __future__ import annotations

import os
import sys
import time

FRAMES, ROUNDS = 40, 3


def lidar_stage():
    from perception.geometry.grid import VoxelGrid
    from perception.pipeline.stages import LidarConfig, LidarPreprocess

    return LidarPreprocess(LidarConfig(grid=VoxelGrid(-50.0, -50.0, -3.0, 50.0, 50.0, 5.0, (0.2, 0.2, 0.2)),
                                       num_sweeps=3))


def frames(n: int = FRAMES) -> list:
    from perception.sim.scene import SimConfig, SimSequence

    seq = SimSequence(7, SimConfig(frames=n, render_cameras=False))
    return [s.frame for s in seq]


def rows(repeats: int = ROUNDS) -> list[dict]:
    import ray

    from perception.pipeline.ray_stream import run_stream, start_actors
    from perception.pipeline.runner import run_inprocess

    stream = frames()
    n_points = sum(len(f.points.points) for f in stream) / len(stream)
    run_inprocess([lidar_stage()], stream[:3], progress=False)  # numba warm-up outside the timing
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        t_start = time.perf_counter()
        actors = start_actors([lidar_stage], ["lidar"], num_cpus=1)
        startup_s = time.perf_counter() - t_start
        run_stream([lidar_stage], stream[:3], actors=actors, names=["lidar"], progress=False)  # warm the actor
        local_s = ray_s = 0.0
        for _ in range(repeats):  # interleaved, so both modes see the same machine load
            t0 = time.perf_counter()
            local = run_inprocess([lidar_stage()], stream, progress=False)
            local_s += time.perf_counter() - t0
            ray.get([a.reset.remote() for a in actors])
            t0 = time.perf_counter()
            remote = run_stream([lidar_stage], stream, actors=actors, names=["lidar"], progress=False, max_in_flight=4)
            ray_s += time.perf_counter() - t0
    finally:
        ray.shutdown()
    local_fps, ray_fps = repeats * len(stream) / local_s, repeats * len(stream) / ray_s
    assert local.frames_out == remote.frames_out == len(stream), (local.to_dict(), remote.to_dict())
    stage = {s["name"]: s for s in remote.to_dict()["stages"]}["lidar"]
    params = {"frames": len(stream), "rounds": repeats, "points_per_frame": round(n_points),
              "stages": "lidar preprocess (3 sweeps, motion compensation) + voxelize", "cpus": os.cpu_count()}
    return [{"bench": "pipeline", "impl": "ray streaming (1 actor per stage)", "peer": "in-process (--workers 0)",
             "params": params, "fps": round(ray_fps, 2), "peer_fps": round(local_fps, 2),
             "ratio": round(ray_fps / local_fps, 3), "median_ms": round(1e3 / ray_fps, 3),
             "peer_median_ms": round(1e3 / local_fps, 3), "speedup": round(ray_fps / local_fps, 3),
             "actor_startup_s": round(startup_s, 2), "stage_latency_ms_p50": round(stage["latency_ms_p50"], 2),
             "queue_depth": remote.to_dict()["queue_depth"]}]


if __name__ == "__main__":
    import json

    print(json.dumps(rows(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS), indent=1))
