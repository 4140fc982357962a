"""Geometry of 3D boxes in mmdet3d's LiDAR convention: the one place for it.

A box row is ``[x, y, z, dx, dy, dz, yaw, (vx, vy)]``: ``(x, y, z)`` the *bottom* centre,
``dx, dy, dz`` the extent along the box's heading, across it and up (length, width, height), and
``yaw`` the heading angle from +x towards +y about +z. This is ``LiDARInstance3DBoxes`` with
``origin=(0.5, 0.5, 0)``.
"""
from __future__ import annotations

import numpy as np

from perception.geometry.se3 import transform_points

# Unit-cube corners, bottom face first (counter-clockwise from the rear-right), then the top face.
_UNIT_CORNERS = np.array(
    [[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0],
     [-0.5, -0.5, 1], [0.5, -0.5, 1], [0.5, 0.5, 1], [-0.5, 0.5, 1]],
    dtype=np.float64,
)
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def yaw_rotation(yaw: np.ndarray) -> np.ndarray:
    """``yaw [N]`` → rotations about +z ``[N, 3, 3]``."""
    c, s = np.cos(yaw), np.sin(yaw)
    r = np.zeros(yaw.shape + (3, 3))
    r[..., 0, 0], r[..., 0, 1], r[..., 1, 0], r[..., 1, 1], r[..., 2, 2] = c, -s, s, c, 1.0
    return r


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """``boxes [N, >=7]`` → corners ``[N, 8, 3]`` (float64), ordered as ``BOX_EDGES`` expects."""
    b = np.asarray(boxes, dtype=np.float64)
    local = _UNIT_CORNERS[None] * b[:, None, 3:6]  # [N, 8, 3]
    return np.einsum("nij,nkj->nki", yaw_rotation(b[:, 6]), local) + b[:, None, :3]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``points [M, >=3]``, ``boxes [N, >=7]`` → ``[M, N]`` bool: point inside box (faces inclusive)."""
    b = np.asarray(boxes, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)[:, :3]
    if len(b) == 0 or len(p) == 0:
        return np.zeros((len(p), len(b)), dtype=bool)
    d = p[:, None, :] - b[None, :, :3]  # [M, N, 3]
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    lx = d[..., 0] * c + d[..., 1] * s  # along heading
    ly = -d[..., 0] * s + d[..., 1] * c
    return (np.abs(lx) <= b[:, 3] / 2) & (np.abs(ly) <= b[:, 4] / 2) & (d[..., 2] >= 0) & (d[..., 2] <= b[:, 5])


def heading_to_yaw(directions: np.ndarray) -> np.ndarray:
    """Heading vectors ``[N, 3]`` → yaw ``[N]`` about +z (their xy projection)."""
    return np.arctan2(directions[:, 1], directions[:, 0])


def transform_boxes(boxes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Move ``boxes [N, 7|9]`` by the rigid ``t [4, 4]`` whose rotation is about z (ego/world moves).

    The bottom centre is transformed; yaw and velocity turn with the rotation's heading.
    Returns the same dtype as ``boxes``.
    """
    b = np.asarray(boxes)
    out = b.astype(np.float64).copy()
    out[:, :3] = transform_points(t, out[:, :3])
    heading = np.stack([np.cos(out[:, 6]), np.sin(out[:, 6]), np.zeros(len(out))], axis=1)
    out[:, 6] = heading_to_yaw(heading @ t[:3, :3].T)
    if b.shape[1] >= 9:
        vel = np.concatenate([out[:, 7:9], np.zeros((len(out), 1))], axis=1) @ t[:3, :3].T
        out[:, 7:9] = vel[:, :2]
    return out.astype(b.dtype)


def camera_box_to_lidar(
    location: np.ndarray, dims_hwl: np.ndarray, rotation_y: np.ndarray, lidar_from_cam: np.ndarray
) -> np.ndarray:
    """KITTI camera-frame boxes → LiDAR boxes ``[N, 7]``.

    ``location [N, 3]`` is the bottom centre in the (rectified) camera frame (x right, y down,
    z forward), ``dims_hwl [N, 3]`` height/width/length, ``rotation_y [N]`` the heading about the
    camera's y axis (0 = facing camera +x). The heading vector is transformed with the full
    rotation, so a calibration whose axes are not exactly permuted is handled exactly.
    """
    loc = transform_points(lidar_from_cam, np.asarray(location, dtype=np.float64))
    ry = np.asarray(rotation_y, dtype=np.float64)
    heading_cam = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], axis=1)
    yaw = heading_to_yaw(heading_cam @ lidar_from_cam[:3, :3].T)
    h, w, l = np.asarray(dims_hwl, dtype=np.float64).T
    return np.stack([loc[:, 0], loc[:, 1], loc[:, 2], l, w, h, yaw], axis=1)
