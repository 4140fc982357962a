"""LidarPreprocess on hand-made sweeps: exact drop counts, motion compensation, multi-sweep, voxelization."""
import numpy as np
import pytest
import torch

from perception.geometry.grid import VoxelGrid
from perception.ops.voxelize import voxelize
from perception.pipeline.stages import LidarConfig, LidarPreprocess, Preprocessed
from perception.structures import SE3, Calibration, EgoPose, Frame, PointCloud

FIELDS = ("x", "y", "z", "intensity", "time")
GRID = VoxelGrid(-40.0, -40.0, -2.0, 40.0, 40.0, 4.0, (0.5, 0.5, 0.5))
# LiDAR 1 m ahead of the ego origin and 2 m up: the calibration must be applied
EGO_FROM_LIDAR = SE3.from_rt(np.eye(3), [1.0, 0.0, 2.0])
CALIB = Calibration({"lidar": EGO_FROM_LIDAR})


def yaw_pose(x: float, y: float, yaw: float) -> SE3:
    c, s = np.cos(yaw), np.sin(yaw)
    return SE3.from_rt(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), [x, y, 0.0])


def frame(token, t, points, world_from_ego) -> Frame:
    cloud = PointCloud(np.asarray(points, np.float32), FIELDS, t, "lidar")
    return Frame(token, t, CALIB, lidar={"lidar": cloud}, ego_pose=EgoPose(t, world_from_ego))


def sensor_points(world_pts, world_from_ego: SE3, offsets, intensity=0.5):
    """World points seen from the LiDAR when the ego is at ``world_from_ego`` → rows of FIELDS."""
    lidar = (world_from_ego @ EGO_FROM_LIDAR).inverse().apply(np.asarray(world_pts, np.float64))
    return np.column_stack([lidar, np.full(len(lidar), intensity), offsets])


def test_nonfinite_and_out_of_range_counted_exactly():
    pts = np.array([
        [1, 1, 0, 0.1, 0], [2, 1, 0, 0.2, 0], [3, -1, 0, 0.3, 0], [-5, 2, -1, 0.4, 0],  # kept
        [np.nan, 1, 0, 0.5, 0], [1, np.inf, 0, 0.5, 0], [1, 1, 0, np.nan, 0],  # non-finite (x, y, feature)
        [1, 1, 0, 0.5, -np.inf],  # non-finite time
        [45, 0, 0, 0.5, 0], [0, -50, 0, 0.5, 0], [0, 0, 5, 0.5, 0],  # out of range (ego frame: z + 2)
    ])
    out = LidarPreprocess(LidarConfig(grid=GRID, time_field="time"))(frame("f0", 1.0, pts, SE3.identity()))
    c = out.lidar.counts
    assert (c.input, c.nonfinite, c.out_of_range, c.kept_current) == (11, 4, 3, 4)
    assert c.in_voxels + c.voxel_over_capacity == 4
    assert out.lidar.points.shape == (4, 5)  # x, y, z, intensity, time_lag
    assert out.lidar.fields == ("x", "y", "z", "intensity", "time_lag")
    # moved into the ego frame by the calibration, features carried, current sweep has lag 0
    np.testing.assert_allclose(out.lidar.points[:, :3].numpy(), pts[:4, :3] + [1.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(out.lidar.points[:, 3].numpy(), [0.1, 0.2, 0.3, 0.4], atol=1e-7)
    assert (out.lidar.points[:, 4] == 0).all()
    # one pose only: nothing brackets the sweep, so it is flagged (its offsets are all 0 here)
    assert c.uncompensated == 7 and not out.lidar.motion_compensated


def test_motion_compensation_lands_points_on_the_static_world_point():
    """The ego drives at 10 m/s with a yaw rate; one static world point is measured at three times in
    the sweep. Uncompensated the three measurements spread over ~1 m; compensated they coincide."""
    stage = LidarPreprocess(LidarConfig(grid=GRID))
    pose = lambda t: yaw_pose(10.0 * t, 0.5 * t, 0.3 * t)  # noqa: E731 (poses at the frame times only)
    world_pt = np.array([[20.0, 3.0, 0.5]])
    stage(frame("f0", 0.0, sensor_points(world_pt, pose(0.0), [0.0]), pose(0.0)))
    # second frame: sweep from t=0.0 to t=0.1; the ego pose between frames is interpolated linearly,
    # so the measurement must be simulated with the same interpolation
    times = np.array([-0.1, -0.05, 0.0])
    rows = [sensor_points(world_pt, pose(0.0).interpolate(pose(0.1), 1 + dt / 0.1), [dt]) for dt in times]
    out = stage(frame("f1", 0.1, np.concatenate(rows), pose(0.1)))
    expected = pose(0.1).inverse().apply(world_pt)[0]  # the world point in the ego frame at t = 0.1
    got = out.lidar.points[:, :3].numpy().astype(np.float64)
    assert out.lidar.motion_compensated and out.lidar.counts.uncompensated == 0
    np.testing.assert_allclose(got, np.tile(expected, (3, 1)), atol=1e-4)
    rigid = np.concatenate(rows)[:, :3] + [1.0, 0.0, 2.0]  # what calibration alone would give
    assert np.linalg.norm(rigid[0] - rigid[2]) > 0.9


def test_multi_sweep_places_previous_static_point_at_current_location_with_time_lag():
    pose0, pose1 = yaw_pose(0.0, 0.0, 0.0), yaw_pose(1.5, 0.2, np.radians(20))
    world = np.array([[20.0, 5.0, 0.0], [15.0, -4.0, 1.0]])
    stage = LidarPreprocess(LidarConfig(grid=GRID, num_sweeps=3))
    first = stage(frame("f0", 0.0, sensor_points(world, pose0, [0.0, 0.0], 0.25), pose0))
    assert first.lidar.num_sweeps == 1
    out = stage(frame("f1", 0.1, sensor_points(world, pose1, [0.0, 0.0], 0.75), pose1))
    lid = out.lidar
    assert lid.num_sweeps == 2  # only one past sweep exists yet
    assert lid.points.shape == (4, 5)
    expected = pose1.inverse().apply(world)
    cur, past = lid.points[:2].numpy(), lid.points[2:].numpy()
    np.testing.assert_allclose(cur[:, :3], expected, atol=1e-4)
    np.testing.assert_allclose(past[:, :3], expected, atol=1e-4)  # the static points coincide
    np.testing.assert_allclose(cur[:, 3], 0.75)
    np.testing.assert_allclose(past[:, 3], 0.25)  # features of the past sweep kept
    np.testing.assert_allclose(cur[:, 4], 0.0)
    np.testing.assert_allclose(past[:, 4], 0.1, atol=1e-6)  # time lag = t_now - t_sweep
    assert (lid.counts.sweep_input, lid.counts.kept_sweeps) == (2, 2)
    lid.counts.check()


def test_sequence_restart_clears_history():
    stage = LidarPreprocess(LidarConfig(grid=GRID, num_sweeps=3))
    pts = sensor_points(np.array([[10.0, 0.0, 0.0]]), SE3.identity(), [0.0])
    stage(frame("a0", 5.0, pts, SE3.identity()))
    stage(frame("a1", 5.1, pts, SE3.identity()))
    out = stage(frame("b0", 0.1, pts, SE3.identity()))  # time went backwards: a new sequence
    assert out.lidar.num_sweeps == 1 and out.lidar.counts.sweep_input == 0


def test_voxels_match_calling_voxelize_directly():
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-45, 45, (3000, 2)), rng.uniform(-4, 2, 3000),
                           rng.random(3000), np.zeros(3000)])
    cfg = LidarConfig(grid=GRID, max_points_per_voxel=3, max_voxels=500)
    out = LidarPreprocess(cfg)(frame("f0", 0.0, pts, SE3.identity()))
    ref = voxelize(out.lidar.points, GRID.voxel_size, cfg.point_cloud_range, 3, 500)
    v = out.lidar.voxels
    assert len(v) == 500
    assert torch.equal(v.voxels, ref.voxels) and torch.equal(v.coords, ref.coords)
    assert torch.equal(v.num_points, ref.num_points)
    c = out.lidar.counts
    assert c.voxel_over_capacity == ref.dropped_over_capacity > 0
    assert c.in_voxels == int(ref.num_points.sum())
    c.check()


def test_frame_without_lidar_raises_with_token():
    with pytest.raises(ValueError, match="nolidar"):
        LidarPreprocess()(Preprocessed(Frame("nolidar", 0.0, CALIB)))
