"""Rigid transforms in SE(3): the one place for pose algebra.

Functions work on stacks of homogeneous matrices ``[..., 4, 4]`` given as numpy arrays or torch
tensors (the result has the input's type). :class:`SE3` is the validated, immutable value that the
structures hold.

Convention: ``T_a_from_b`` maps points in frame ``b`` to frame ``a``: ``p_a = T_a_from_b @ p_b``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from perception.geometry._array import Array, is_torch

ORTHONORMAL_ATOL = 1e-3  # KITTI's calibration rotations are orthonormal to ~1e-6, hand-typed ones to ~1e-4


def compose(a: Array, b: Array) -> Array:
    """``a ∘ b`` for ``[..., 4, 4]`` stacks (matrix product, broadcasting)."""
    return a @ b


def inverse(t: Array) -> Array:
    """Inverse of ``[..., 4, 4]`` rigid transforms, using ``R^T`` (exact, no general inversion)."""
    r = t[..., :3, :3]
    p = t[..., :3, 3:]
    rt = r.transpose(-1, -2) if is_torch(t) else np.swapaxes(r, -1, -2)
    out = t.clone() if is_torch(t) else t.copy()
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -(rt @ p)
    return out


def transform_points(t: Array, points: Array) -> Array:
    """Apply ``t [4, 4]`` (or ``[..., 4, 4]`` broadcasting against points' batch dims) to ``points [..., 3]``."""
    r = t[..., :3, :3]
    p = t[..., :3, 3]
    if is_torch(points):
        r = r.to(points.dtype)
        p = p.to(points.dtype)
        return points @ r.transpose(-1, -2) + p
    return points @ np.swapaxes(r, -1, -2).astype(points.dtype, copy=False) + p.astype(points.dtype, copy=False)


def from_rotation_translation(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation and ``[3]`` translation → ``[4, 4]`` float64 matrix."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return m


def interpolate(t0: np.ndarray, t1: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Pose between ``t0`` (alpha=0) and ``t1`` (alpha=1): slerp on rotation, lerp on translation.

    ``alpha`` may be a scalar or an ``[N]`` array (giving ``[N, 4, 4]``); values outside [0, 1]
    extrapolate the translation and clamp nothing, so callers decide what is allowed.
    """
    a = np.asarray(alpha, dtype=np.float64)
    rots = Rotation.from_matrix(np.stack([t0[:3, :3], t1[:3, :3]]))
    # Slerp only interpolates inside [0, 1]; extrapolate by composing the relative rotation.
    rel = (rots[0].inv() * rots[1]).as_rotvec()
    r = Rotation.from_rotvec(np.multiply.outer(a, rel).reshape(-1, 3))
    out = np.broadcast_to(np.eye(4), (r.as_matrix().shape[0], 4, 4)).copy()
    out[:, :3, :3] = (rots[0] * r).as_matrix()
    out[:, :3, 3] = (1.0 - a.reshape(-1, 1)) * t0[:3, 3] + a.reshape(-1, 1) * t1[:3, 3]
    return out.reshape(a.shape + (4, 4))


def slerp_rotations(times: np.ndarray, rotations: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Slerp ``rotations [K, 3, 3]`` keyed at increasing ``times [K]`` to ``query [N]`` → ``[N, 3, 3]``."""
    return Slerp(times, Rotation.from_matrix(rotations))(query).as_matrix()


def check_rigid(m: np.ndarray, name: str) -> np.ndarray:
    """Validate a ``[4, 4]`` rigid transform and return it as float64; raise ``ValueError`` naming ``name``."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ValueError(f"{name}: expected a 4x4 (or 3x4) rigid transform, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: transform has non-finite entries:\n{m}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1], got {m[3]}")
    r = m[:3, :3]
    err = np.abs(r.T @ r - np.eye(3)).max()
    if err > ORTHONORMAL_ATOL or np.linalg.det(r) < 0:
        raise ValueError(
            f"{name}: rotation block is not orthonormal with det +1 "
            f"(max |R^T R - I| = {err:.2e}, det = {np.linalg.det(r):.4f})"
        )
    return m


@dataclass(frozen=True)
class SE3:
    """A validated rigid transform. ``matrix [4, 4]`` float64 maps the source frame into the target frame."""

    matrix: np.ndarray

    def __post_init__(self) -> None:
        m = check_rigid(self.matrix, "SE3.matrix")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    @classmethod
    def identity(cls) -> "SE3":
        return cls(np.eye(4))

    @classmethod
    def from_rt(cls, rotation: np.ndarray, translation: np.ndarray) -> "SE3":
        return cls(from_rotation_translation(rotation, translation))

    @classmethod
    def from_quaternion(cls, quat_wxyz: np.ndarray, translation: np.ndarray) -> "SE3":
        """From a scalar-first unit quaternion ``[w, x, y, z]`` (nuScenes, pyquaternion) and a translation.

        WoodScape stores its quaternions scalar-last: see :func:`perception.geometry.cameras.woodscape_extrinsic`.
        """
        w, x, y, z = np.asarray(quat_wxyz, dtype=np.float64)
        return cls.from_rt(Rotation.from_quat([x, y, z, w]).as_matrix(), translation)

    @property
    def rotation(self) -> np.ndarray:
        return self.matrix[:3, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.matrix[:3, 3]

    def inverse(self) -> "SE3":
        return SE3(inverse(self.matrix))

    def __matmul__(self, other: "SE3") -> "SE3":
        if not isinstance(other, SE3):
            return NotImplemented
        return SE3(compose(self.matrix, other.matrix))

    def apply(self, points: Array) -> Array:
        """Transform ``points [..., 3]`` (numpy or torch, dtype kept)."""
        return transform_points(self.matrix if not is_torch(points) else _as_torch(self.matrix, points), points)

    def interpolate(self, other: "SE3", alpha: float) -> "SE3":
        return SE3(interpolate(self.matrix, other.matrix, alpha))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SE3) and np.array_equal(self.matrix, other.matrix)

    def __hash__(self) -> int:
        return hash(self.matrix.tobytes())


def _as_torch(m: np.ndarray, like):
    import torch

    return torch.as_tensor(np.array(m), dtype=like.dtype, device=like.device)
