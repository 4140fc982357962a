"""Odometry motion within a sweep: the planar arc and deskewing a sweep to another time."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception.geometry.motion import deskew_by_odometry, planar_twist_poses


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
