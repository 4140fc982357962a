"""Ego-motion compensation of spinning-LiDAR sweeps.

A spinning LiDAR measures each point in the sensor frame *at that point's own time*; while the
car moves, a sweep of a straight wall comes out bent. Compensation moves every point through the
sensor's pose at its capture time into one common frame: poses interpolated between known ones
(:func:`motion_compensate`) or, within one frame, the car's odometry (:func:`deskew_by_odometry`).
"""
from __future__ import annotations

import numpy as np

from perception.geometry import se3


def interpolate_poses(times: np.ndarray, poses: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Poses ``[K, 4, 4]`` keyed at increasing ``times [K]`` → ``[N, 4, 4]`` at ``query [N]``.

    Rotation by slerp, translation linearly; queries outside ``[times[0], times[-1]]`` raise
    ``ValueError`` (extrapolating a pose silently is how sweeps get smeared).
    """
    times = np.asarray(times, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    if poses.shape != (len(times), 4, 4):
        raise ValueError(f"interpolate_poses: poses must be [{len(times)}, 4, 4], got {poses.shape}")
    if len(times) < 2 or (np.diff(times) <= 0).any():
        raise ValueError(f"interpolate_poses: need >= 2 strictly increasing pose times, got {times}")
    if len(query) and (query.min() < times[0] - 1e-9 or query.max() > times[-1] + 1e-9):
        raise ValueError(f"interpolate_poses: query times [{query.min():.6f}, {query.max():.6f}] outside the "
                         f"pose times [{times[0]:.6f}, {times[-1]:.6f}]")
    out = np.empty((len(query), 4, 4))
    out[:] = np.eye(4)
    out[:, :3, :3] = se3.slerp_rotations(times, poses[:, :3, :3], np.clip(query, times[0], times[-1]))
    for a in range(3):
        out[:, a, 3] = np.interp(query, times, poses[:, a, 3])
    return out


def transform_at_times(points: np.ndarray, point_times: np.ndarray, poses_at) -> np.ndarray:
    """``points [N, 3]``, each moved by the pose at its own time: ``poses_at(times [U]) -> [U, 4, 4]`` is asked once
    per distinct time (a spinning LiDAR's firings share times). Returns ``[N, 3]`` float64."""
    uniq, inverse = np.unique(np.asarray(point_times, dtype=np.float64), return_inverse=True)
    m = poses_at(uniq)
    return np.einsum("nij,nj->ni", m[inverse, :3, :3], np.asarray(points, dtype=np.float64)) + m[inverse, :3, 3]


def motion_compensate(points: np.ndarray, point_times: np.ndarray, pose_times: np.ndarray,
                      world_from_sensor: np.ndarray, target_from_world: np.ndarray) -> np.ndarray:
    """Move ``points [N, 3]`` (sensor frame, each at ``point_times [N]``) into one frame.

    ``world_from_sensor [K, 4, 4]`` are the sensor's poses at ``pose_times [K]`` (bracketing the
    sweep); ``target_from_world [4, 4]`` is the frame to express the points in (typically the
    sensor or ego frame at the sweep's reference time). Returns ``[N, 3]`` float64.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(point_times) != len(points):
        raise ValueError(f"motion_compensate: points [N, 3] with N point times, got {points.shape} and {len(point_times)}")
    return transform_at_times(points, point_times,
                              lambda times: target_from_world @ interpolate_poses(pose_times, world_from_sensor, times))


def planar_twist_poses(speed: float, yaw_rate: float, dt: np.ndarray) -> np.ndarray:
    """``ego(t) ← ego(t + dt)`` ``[N, 4, 4]`` for ``dt [N]`` seconds, for a car driving at constant ``speed`` (m/s,
    along its x axis) and ``yaw_rate`` (rad/s, about z): an arc in the ground plane (a line when ``yaw_rate`` is 0).
    What odometry gives within one frame, where no pose history brackets a sweep."""
    dt = np.asarray(dt, dtype=np.float64).reshape(-1)
    th = yaw_rate * dt
    if abs(yaw_rate) > 1e-9:
        x, y = speed * np.sin(th) / yaw_rate, speed * (1.0 - np.cos(th)) / yaw_rate
    else:
        x, y = speed * dt, np.zeros_like(dt)
    out = np.tile(np.eye(4), (len(dt), 1, 1))
    c, s = np.cos(th), np.sin(th)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, 0, 3], out[:, 1, 3] = x, y
    return out


def deskew_by_odometry(points: np.ndarray, point_times: np.ndarray, target_time: float, ref_time: float,
                       ego_from_sensor: np.ndarray, speed: float, yaw_rate: float) -> np.ndarray:
    """``points [N, 3]`` (sensor frame, each measured at ``point_times [N]``, absolute s) → ``[N, 3]`` float64 in the
    sensor frame at ``target_time`` (e.g. a camera's exposure), the car's motion taken from odometry
    (:func:`planar_twist_poses`: ``speed``, ``yaw_rate`` measured at ``ref_time``) and the sensor's mount
    ``ego_from_sensor [4, 4]``."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(point_times) != len(points):
        raise ValueError(f"deskew_by_odometry: points [N, 3] with N point times, got {points.shape} and {len(point_times)}")
    if ego_from_sensor.shape != (4, 4):
        raise ValueError(f"deskew_by_odometry: ego_from_sensor must be [4, 4], got {ego_from_sensor.shape}")
    target_from_ref = se3.inverse(planar_twist_poses(speed, yaw_rate, np.array([target_time - ref_time]))[0])
    sensor_from_ego = se3.inverse(ego_from_sensor)
    return transform_at_times(points, point_times, lambda times: sensor_from_ego @ target_from_ref
                              @ planar_twist_poses(speed, yaw_rate, times - ref_time) @ ego_from_sensor)


def moving_points(points: np.ndarray, point_times: np.ndarray, boxes: np.ndarray, boxes_time: float,
                  min_speed: float = 0.3, margin: float = 0.2) -> np.ndarray:
    """Which of ``points [N, 3]`` (ego frame at ``boxes_time``, deskewed by the car's own motion; each measured at
    ``point_times [N]``, absolute s) lie on an object moving faster than ``min_speed`` m/s: ``boxes [M, 9]`` (bottom
    centre, l, w, h, yaw, vx, vy; the same frame, at ``boxes_time``). Deskewing by odometry puts a static world
    where the camera sees it, but a moving object's point stays where the object *was* at the point's time, up to a
    sweep period times its speed behind it (75 ms at 10 m/s: 75 cm). A point is on a box when, moved forward by the
    box's velocity to ``boxes_time``, it falls inside the box grown by ``margin`` m on each side and on top (its
    bottom raised 0.1 m, so the ground it drives on is not taken for it). → ``[N]`` bool."""
    from perception.geometry.boxes import points_in_boxes

    p = np.asarray(points, dtype=np.float64)
    b = np.asarray(boxes, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(point_times) != len(p):
        raise ValueError(f"moving_points: points [N, 3] with N point times, got {p.shape} and {len(point_times)}")
    if b.ndim != 2 or b.shape[1] != 9:
        raise ValueError(f"moving_points: boxes must be [M, 9] with velocities, got {b.shape}")
    out = np.zeros(len(p), bool)
    dt = boxes_time - np.asarray(point_times, dtype=np.float64)
    for box in b[np.hypot(b[:, 7], b[:, 8]) > min_speed]:
        grown = box[:7].copy()
        grown[2] += 0.1
        grown[3:5] += 2 * margin
        grown[5] += margin - 0.1
        q = p.copy()
        q[:, :2] += dt[:, None] * box[None, 7:9]
        out |= points_in_boxes(q, grown[None])[:, 0]
    return out
