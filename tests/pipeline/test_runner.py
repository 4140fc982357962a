"""run_inprocess: errors recorded per frame token with the rest passing in order; Summary JSON; the chain from the sim."""
import json

import numpy as np
import pytest

from perception.geometry.grid import VoxelGrid
from perception.pipeline.runner import Summary, run_inprocess, synchronized_frames
from perception.pipeline.stages import CameraPreprocess, LidarConfig, LidarPreprocess, Preprocessed
from perception.sim.scene import LIDAR, SimConfig, SimSequence
from perception.structures import SE3, Calibration, EgoPose, Frame, PointCloud

CALIB = Calibration({"lidar": SE3.identity()})


def tiny_frame(i: int) -> Frame:
    pts = np.array([[1.0 + i, 2.0, 0.0, 0.5, 0.0]], np.float32)
    cloud = PointCloud(pts, ("x", "y", "z", "intensity", "time"), 0.1 * i, "lidar")
    return Frame(f"tok{i}", 0.1 * i, CALIB, lidar={"lidar": cloud}, ego_pose=EgoPose(0.1 * i, SE3.identity()))


class FailOn:
    name = "fail_on"

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, item: Preprocessed) -> Preprocessed:
        if item.token == self.token:
            raise RuntimeError(f"bad frame {item.token}")
        return item


def test_stage_error_names_the_frame_and_the_others_come_out_in_order(tmp_path):
    out = []
    s = run_inprocess([LidarPreprocess(), FailOn("tok2"), CameraPreprocess()], (tiny_frame(i) for i in range(5)),
                      sink=out.append, progress=False)
    assert [p.token for p in out] == ["tok0", "tok1", "tok3", "tok4"]
    assert all(p.lidar is not None for p in out)
    assert (s.frames_in, s.frames_out, s.frames_failed) == (5, 4, 1)
    assert len(s.errors) == 1
    e = s.errors[0]
    assert (e.stage, e.token, e.type, e.error) == ("fail_on", "tok2", "RuntimeError", "bad frame tok2")
    by_name = {st.name: st for st in s.stages}
    assert by_name["fail_on"].calls == 5 and len(by_name["fail_on"].errors) == 1
    assert by_name["CameraPreprocess"].calls == 4  # the failed frame left the chain
    d = json.loads(s.to_json(tmp_path / "summary.json").read_text())
    assert [st["name"] for st in d["stages"]] == ["source", "LidarPreprocess", "fail_on", "CameraPreprocess"]
    for st in d["stages"]:
        assert st["latency_ms_p95"] >= st["latency_ms_p50"] >= 0 and st["latency_ms_mean"] >= 0
        assert st["throughput_fps"] > 0
    assert d["errors"] == [{"stage": "fail_on", "token": "tok2", "error": "bad frame tok2", "type": "RuntimeError"}]


def test_duplicate_stage_names_are_kept_apart():
    s = run_inprocess([FailOn("x"), FailOn("y")], [tiny_frame(0)], progress=False)
    assert [st.name for st in s.stages] == ["source", "fail_on", "fail_on#1"]


@pytest.fixture(scope="module")
def sim():
    seq = SimSequence(3, SimConfig(frames=3, render_cameras=False))
    return seq, list(seq)


def test_chain_runs_from_the_synthetic_world(sim, tmp_path):
    seq, samples = sim
    sync, frames = synchronized_frames(samples, seq.calib, LIDAR, with_cameras=False)
    cfg = LidarConfig(grid=VoxelGrid(-40.0, -40.0, -3.0, 40.0, 40.0, 3.0, (0.4, 0.4, 0.5)), num_sweeps=2)
    out = []
    s = run_inprocess([LidarPreprocess(cfg), CameraPreprocess()], frames, sink=out.append, progress=False, sync=sync)
    assert isinstance(s, Summary) and s.errors == []
    assert [p.token for p in out] == [x.frame.token for x in samples]
    assert s.sync["frames"] == 3 and s.sync["missing"] == {}
    first, last = out[0].lidar, out[-1].lidar
    assert not first.motion_compensated and first.counts.uncompensated == first.counts.input - first.counts.nonfinite
    assert last.motion_compensated and last.num_sweeps == 2
    for p in out:
        p.lidar.counts.check()
        assert p.lidar.counts.out_of_range > 0  # the sim's LiDAR sees past 40 m
    # the past sweep, moved through the ego poses, lands on the current one (static world): its points'
    # nearest current neighbours are close although the car moved between the sweeps
    from scipy.spatial import cKDTree

    pts = last.points.numpy()
    lag = pts[:, -1]
    moved = np.linalg.norm(samples[2].frame.ego_pose.world_from_ego.translation
                           - samples[1].frame.ego_pose.world_from_ego.translation)
    d, _ = cKDTree(pts[lag == 0, :3]).query(pts[lag > 0, :3])
    assert moved > 0.3 and np.median(d) < 0.1, (moved, np.median(d))
    np.testing.assert_allclose(np.unique(lag), [0.0, 0.1], atol=1e-6)
    assert json.loads(s.to_json(tmp_path / "s.json").read_text())["sync"]["frames"] == 3
