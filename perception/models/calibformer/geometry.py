"""Extrinsic corrections for CalibFormer: the miscalibration sampler, quaternions, sparse depth images.

Convention (used by the model, its losses, the sampler and :mod:`perception.eval.calibration`):
an extrinsic is ``T_cam_from_lidar [4, 4]`` (``p_cam = R p_lidar + t``). A *miscalibration* and a
*correction* act on it as a rotation of the LiDAR about its own origin expressed in camera axes and
a shift of the LiDAR origin in camera axes::

    apply(T, (R_d, t_d)) = [R_d R | t + t_d]

so the rotation part (pixels move the same way at every depth) and the translation part (parallax,
falling with depth) stay decoupled, and the translation target does not depend on the rotation or
the lever arm between the sensors. The correction that undoes a miscalibration of a true extrinsic
``T_gt`` into ``T_init`` is ``(R_gt R_init^T, t_gt - t_init)``.

Quaternions are scalar-first ``[w, x, y, z]`` (as :meth:`perception.structures.SE3.from_quaternion`).
Projection goes through the camera models of :mod:`perception.geometry.cameras` (torch path), never
re-implemented here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from perception.geometry.camera_base import CameraModel

DEFAULT_RANGE = (10.0, 0.25)  # CalibFormer's and LCCNet's training range: +-10 deg, +-0.25 m per axis
LCCNET_RANGE = (20.0, 1.5)  # LCCNet's widest range: +-20 deg, +-1.5 m per axis


@dataclass(frozen=True)
class Miscalibration:
    """A rotation ``rotation [3, 3]`` of the LiDAR about its origin (camera axes) and an origin shift ``translation [3]`` m."""

    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self) -> None:
        r, t = np.asarray(self.rotation, np.float64), np.asarray(self.translation, np.float64)
        if r.shape != (3, 3) or t.shape != (3,):
            raise ValueError(f"Miscalibration: rotation [3, 3] and translation [3], got {r.shape} and {t.shape}")
        if not (np.isfinite(r).all() and np.isfinite(t).all()):
            raise ValueError("Miscalibration: non-finite entries")
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation", t)

    def apply(self, cam_from_lidar: np.ndarray) -> np.ndarray:
        """``[4, 4]`` extrinsic with this miscalibration (or correction) applied (see the module docstring)."""
        out = np.array(cam_from_lidar, dtype=np.float64)
        if out.shape != (4, 4):
            raise ValueError(f"Miscalibration.apply: expected a [4, 4] extrinsic, got {out.shape}")
        out[:3, :3] = self.rotation @ out[:3, :3]
        out[:3, 3] = out[:3, 3] + self.translation
        return out

    @classmethod
    def between(cls, cam_from_lidar: np.ndarray, target: np.ndarray) -> "Miscalibration":
        """The correction taking ``cam_from_lidar`` to ``target`` (both ``[4, 4]``)."""
        a, b = np.asarray(cam_from_lidar, np.float64), np.asarray(target, np.float64)
        return cls(b[:3, :3] @ a[:3, :3].T, b[:3, 3] - a[:3, 3])

    def inverse(self) -> "Miscalibration":
        return Miscalibration(self.rotation.T, -self.translation)

    @property
    def angle_deg(self) -> float:
        return float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))

    def axes(self) -> np.ndarray:
        """``[6]``: the rotation vector (deg, about the camera's x, y, z) and the translation (cm, along them)."""
        return np.r_[np.degrees(Rotation.from_matrix(self.rotation).as_rotvec()), 100 * self.translation]


def sample_miscalibration(rng: np.random.Generator, max_deg: float = DEFAULT_RANGE[0],
                          max_m: float = DEFAULT_RANGE[1]) -> Miscalibration:
    """LCCNet's sampler: roll, pitch and yaw each uniform in ``+-max_deg``, x, y, z each uniform in ``+-max_m``.

    The three angles are composed as XYZ Euler angles about the camera axes (LCCNet's ``mathutils.Euler(..., 'XYZ')``).
    """
    if max_deg < 0 or max_m < 0:
        raise ValueError(f"sample_miscalibration: ranges must be >= 0, got {max_deg} deg, {max_m} m")
    angles = rng.uniform(-max_deg, max_deg, 3)
    return Miscalibration(Rotation.from_euler("xyz", angles, degrees=True).as_matrix(), rng.uniform(-max_m, max_m, 3))


# --- quaternions (torch, [..., 4] scalar-first) -------------------------------------------------

def quat_normalize(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``[..., 4]`` with ``w >= 0`` (the same rotation)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """``r [..., 3, 3]`` → ``[..., 4]`` scalar-first, ``w >= 0``."""
    xyzw = Rotation.from_matrix(np.asarray(r, np.float64).reshape(-1, 3, 3)).as_quat()
    q = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)
    q = np.where(q[:, :1] < 0, -q, q)
    return q.reshape(np.shape(r)[:-2] + (4,))


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit ``q [..., 4]`` (scalar-first) → ``[..., 3, 3]`` (differentiable)."""
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def quat_angle(q_pred: torch.Tensor, q_true: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (radians) between unit quaternions ``[..., 4]``: ``2 atan2(|v|, |w|)`` of ``q_pred^-1 q_true``.

    The atan2 form keeps a finite gradient at zero error, where ``2 acos(|<q1, q2>|)`` has none.
    """
    w1, v1 = q_pred[..., :1], q_pred[..., 1:]
    w2, v2 = q_true[..., :1], q_true[..., 1:]
    w = w1 * w2 + (v1 * v2).sum(-1, keepdim=True)  # conj(q1) * q2
    v = w1 * v2 - w2 * v1 - torch.cross(v1, v2, dim=-1)
    return 2 * torch.atan2((v.square().sum(-1) + 1e-12).sqrt(), w[..., 0].abs())


# --- sparse depth image ---------------------------------------------------------------------

def depth_image(points_cam: torch.Tensor, camera: CameraModel, max_depth: float = 80.0,
                min_depth: float = 0.5, ref_depth: float | None = None,
                intensity: torch.Tensor | None = None, subpixel: bool = False,
                values: torch.Tensor | None = None) -> torch.Tensor:
    """LiDAR points ``points_cam [N, 3]`` (camera frame) → ``[2, H, W]``: inverse depth (``min(1, ref_depth / z)``
    of the nearest point per pixel, ``ref_depth`` defaulting to ``min_depth``; 0 where none) and occupancy;
    with ``intensity [N]`` (in [0, 1]) a further channel, the nearest point's intensity; with ``subpixel`` two
    more, where in its pixel the nearest point falls (``u - round(u)``, ``v - round(v)``, in [-0.5, 0.5]; 0 where
    none); with ``values [N, C]`` C more, the nearest point's values → ``[2 + intensity + 2 subpixel + C, H, W]``.
    Without the sub-pixel channels a shift smaller than a pixel shows only in which pixels the points round to.

    Projection is ``camera.project`` (any camera model). Points behind ``min_depth``, beyond
    ``max_depth``, non-finite or outside the image are left out.
    """
    if points_cam.ndim != 2 or points_cam.shape[1] != 3:
        raise ValueError(f"depth_image: expected points [N, 3], got {tuple(points_cam.shape)}")
    if intensity is not None and tuple(intensity.shape) != (len(points_cam),):
        raise ValueError(f"depth_image: intensity must be [{len(points_cam)}], got {tuple(intensity.shape)}")
    if values is not None and (values.ndim != 2 or len(values) != len(points_cam)):
        raise ValueError(f"depth_image: values must be [{len(points_cam)}, C], got {tuple(values.shape)}")
    H, W = camera.height, camera.width
    uv, valid = camera.project(points_cam)
    z = points_cam[:, 2]
    valid = valid & (z > min_depth) & (z < max_depth)
    uv = uv[valid]
    pixel = uv.round()
    flat = pixel[:, 1].long().clamp(0, H - 1) * W + pixel[:, 0].long().clamp(0, W - 1)
    nearest = torch.full((H * W,), math.inf, dtype=points_cam.dtype, device=points_cam.device)
    nearest = nearest.scatter_reduce(0, flat, z[valid], reduce="amin")
    hit = torch.isfinite(nearest)
    ref = min_depth if ref_depth is None else ref_depth
    inv = torch.where(hit, (ref / nearest.clamp_min(min_depth)).clamp_max(1.0), torch.zeros_like(nearest))
    channels = [inv, hit.to(inv.dtype)]
    if intensity is not None or subpixel or values is not None:
        front = z[valid] == nearest[flat]  # the points that set their pixel's depth
        per_point = (([intensity[valid]] if intensity is not None else []) + ([*(uv - pixel).T] if subpixel else [])
                     + ([*values[valid].T] if values is not None else []))
        channels += [torch.zeros_like(inv).index_put_((flat[front],), c[front].to(inv.dtype)) for c in per_point]
    return torch.stack(channels).reshape(len(channels), H, W)
