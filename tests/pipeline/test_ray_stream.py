"""The streaming runner on a local Ray: faults mid-stream, a bad frame, order and exactly-once output."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from perception.geometry.grid import VoxelGrid
from perception.pipeline.model_stage import FramePrediction, ModelStage
from perception.pipeline.ray_stream import run_stream, start_actors
from perception.pipeline.stages import LidarConfig, LidarPreprocess
from perception.structures import SE3, Calibration, EgoPose, Frame, PointCloud
from tests.pipeline.conftest import CONFIG

CALIB = Calibration({"lidar": SE3.from_rt(np.eye(3), [0.0, 0.0, 1.8])})
N = 50


def frame(i: int, broken: bool = False) -> Frame:
    """2,000 points around the car; ``broken``: a cloud without the intensity field the LiDAR stage needs."""
    rng = np.random.default_rng(i)
    pts = np.concatenate([rng.uniform(-30, 30, (2000, 2)), rng.uniform(-1.5, 1.0, (2000, 1)),
                          rng.uniform(0, 1, (2000, 1)), rng.uniform(0, 0.09, (2000, 1))], 1).astype(np.float32)
    fields = ("x", "y", "z", "intensity", "time")
    if broken:
        pts, fields = pts[:, [0, 1, 2, 4]], ("x", "y", "z", "time")
    pose = EgoPose(0.1 * i, SE3.from_rt(np.eye(3), [1.0 * i, 0.0, 0.0]))  # 10 m/s along x
    return Frame(f"f{i:03d}", 0.1 * i, CALIB, lidar={"lidar": PointCloud(pts, fields, 0.1 * i, "lidar")}, ego_pose=pose)


@pytest.fixture(scope="module")
def model_factory(ckpt):
    return functools.partial(ModelStage, str(CONFIG), str(ckpt))


def lidar_factory() -> LidarPreprocess:
    return LidarPreprocess(LidarConfig(grid=VoxelGrid(-40.0, -40.0, -3.0, 40.0, 40.0, 5.0, (0.4, 0.4, 8.0)), num_sweeps=3))


@pytest.mark.parametrize("victim", [0, 1], ids=["kill-preprocessing-actor", "kill-model-actor"])
def test_actor_killed_mid_stream_still_yields_every_frame_once_in_order(ray_local, model_factory, victim):
    names = ["lidar", "model"]
    actors = start_actors([lidar_factory, model_factory], names)

    def source():
        for i in range(N):
            if i == N // 2:
                ray_local.kill(actors[victim], no_restart=False)  # dies with frames in flight
            yield frame(i)

    out: list[FramePrediction] = []
    s = run_stream([lidar_factory, model_factory], source(), sink=out.append, progress=False, actors=actors,
                   names=names, max_in_flight=6)
    assert [p.token for p in out] == [f"f{i:03d}" for i in range(N)]
    assert all(isinstance(p, FramePrediction) for p in out)
    assert (s.frames_in, s.frames_out, s.frames_failed) == (N, N, 0)
    assert max(s.queue_depth) <= 6
    stages = {st["name"]: st for st in s.to_dict()["stages"]}
    assert stages["lidar"]["calls"] == N and stages["model"]["latency_ms_mean"] > 0


def test_bad_frame_is_reported_and_the_rest_go_through(ray_local, model_factory):
    out = []
    s = run_stream([lidar_factory, model_factory], (frame(i, broken=(i == 7)) for i in range(12)), sink=out.append,
                   progress=False, names=["lidar", "model"])
    assert [p.token for p in out] == [f"f{i:03d}" for i in range(12) if i != 7]
    assert s.frames_failed == 1 and len(s.errors) == 1
    err = s.to_dict()["errors"][0]
    assert err["token"] == "f007" and err["stage"] == "lidar" and "intensity" in err["error"]
