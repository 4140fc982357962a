"""Odometry motion within a sweep: the planar arc and deskewing a sweep to another time."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception.geometry.motion import deskew_by_odometry, moving_points, planar_twist_poses


def test_planar_twist_is_a_line_then_an_arc():
    line = planar_twist_poses(10.0, 0.0, np.array([-0.1, 0.0, 0.05]))
    np.testing.assert_allclose(line[:, :3, 3], [[-1.0, 0, 0], [0, 0, 0], [0.5, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(line[:, :3, :3], np.tile(np.eye(3), (3, 1, 1)), atol=1e-12)
    # turning left at 0.5 rad/s and 5 m/s: on the circle of radius 10 m about (0, 10), heading along its tangent
    arc = planar_twist_poses(5.0, 0.5, np.array([1.0, -2.0]))
    np.testing.assert_allclose(np.linalg.norm(arc[:, :2, 3] - [0.0, 10.0], axis=1), 10.0)
    np.testing.assert_allclose(Rotation.from_matrix(arc[:, :3, :3]).as_euler("xyz")[:, 2], [0.5, -1.0])
    assert arc[0, 0, 3] > 0 and arc[0, 1, 3] > 0  # ahead and to the left after 1 s
    # nearly straight: the arc tends to the line
    np.testing.assert_allclose(planar_twist_poses(10.0, 1e-7, np.array([-0.1]))[0, :3, 3], [-1.0, 0, 0], atol=1e-6)


def test_deskewing_puts_a_static_world_where_the_sensor_sees_it_at_the_target_time():
    rng = np.random.default_rng(0)
    ego_from_sensor = np.eye(4)
    ego_from_sensor[:3, :3] = Rotation.from_euler("xyz", [0.02, -0.03, 1.2]).as_matrix()
    ego_from_sensor[:3, 3] = [1.2, -0.3, 1.8]
    speed, yaw_rate, ref = 12.0, 0.3, 100.0
    world = rng.uniform(-30, 30, (200, 3))  # static points, in the ego frame at the reference time
    times = ref - rng.uniform(0, 0.1, 200)  # each measured at its own time during the sweep

    def seen_at(t, p):  # points of the reference ego frame in the sensor frame at times t
        m = np.linalg.inv(planar_twist_poses(speed, yaw_rate, np.atleast_1d(t) - ref) @ ego_from_sensor)
        return np.einsum("nij,nj->ni", m[:, :3, :3], p) + m[:, :3, 3]

    measured = seen_at(times, world)
    for target in (ref, ref - 0.05):
        want = seen_at(np.full(200, target), world)
        got = deskew_by_odometry(measured, times, target, ref, ego_from_sensor, speed, yaw_rate)
        np.testing.assert_allclose(got, want, atol=1e-9)
    # the skew it removes is the car's travel during the sweep: up to 1.2 m at 12 m/s
    assert np.abs(measured - want).max() > 0.5
    with pytest.raises(ValueError, match="point times"):
        deskew_by_odometry(measured, times[:10], ref, ref, ego_from_sensor, speed, yaw_rate)


def test_moving_points_finds_a_moving_car_where_it_was_when_each_point_was_measured():
    """A car at 10 m/s: each of its points sits where the car was at the point's time (up to 1 m behind the box at
    the frame's time); moved forward by the box's velocity they all fall inside it. Static points around it (a wall,
    the road under and behind it) and a parked car's points are not flagged."""
    from perception.geometry.boxes import points_in_boxes

    rng = np.random.default_rng(1)
    t = 50.0
    car = np.array([10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3, 10 * np.cos(0.3), 10 * np.sin(0.3)])
    parked = np.array([10.0, 6.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0])
    times = t - rng.uniform(0, 0.1, 300)
    local = rng.uniform(-0.5, 0.5, (300, 3))
    local[:150, 0] = np.sign(local[:150, 0]) * 0.5  # on the back and front faces, then the sides (box frame)
    local[150:, 1] = np.sign(local[150:, 1]) * 0.5
    local = local * car[3:6]
    local[:, 2] = rng.uniform(0.15, 1.5, 300)  # (the lowest 10 cm is left to the ground)
    c, s = np.cos(car[6]), np.sin(car[6])
    on_car = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + car[:3]
    on_car[:, :2] -= (t - times)[:, None] * car[7:9]  # where the car was
    assert points_in_boxes(on_car, car[None])[:, 0].mean() < 0.8  # not already inside the box at t (the back face)
    wall = np.column_stack([rng.uniform(0, 20, 100), np.full(100, -4.0), rng.uniform(0, 3, 100)])
    road = np.column_stack([rng.uniform(0, 14, 100), rng.uniform(-1, 1, 100), rng.normal(0, 0.02, 100)])
    on_parked = rng.uniform(-0.5, 0.5, (50, 3)) * parked[3:6] + parked[:3] + [0, 0, 0.75]
    pts = np.concatenate([on_car, wall, road, on_parked])
    pt_times = np.concatenate([times, np.full(250, t - 0.05)])
    flagged = moving_points(pts, pt_times, np.stack([car, parked]), t)
    assert flagged[:300].all() and not flagged[300:].any()
    with pytest.raises(ValueError, match="velocities"):
        moving_points(pts, pt_times, np.stack([car, parked])[:, :7], t)
