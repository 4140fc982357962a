"""Raw sensor samples: what the car sees, before any model.

Shapes are given in comments; all arrays are numpy (readers and preprocessing actors stay
torch-free), converted to tensors by the stage that needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perception.geometry.camera_base import CameraModel

XYZ = ("x", "y", "z")


@dataclass(frozen=True)
class PointCloud:
    """A LiDAR sweep ``points [N, C]`` float32 whose columns are named by ``fields`` (first three x, y, z).

    ``frame_id`` names the coordinate frame of the points (a sensor name from the
    :class:`~perception.structures.calibration.Calibration`, or ``"ego"``); ``timestamp`` is seconds.
    """

    points: np.ndarray  # [N, C] float32
    fields: tuple[str, ...]
    timestamp: float
    frame_id: str = "lidar"

    def __post_init__(self) -> None:
        pts = np.asarray(self.points)
        if pts.ndim != 2:
            raise ValueError(f"PointCloud.points: expected [N, C], got shape {pts.shape}")
        if tuple(self.fields[:3]) != XYZ:
            raise ValueError(f"PointCloud.fields: must start with x, y, z, got {self.fields}")
        if pts.shape[1] != len(self.fields):
            raise ValueError(
                f"PointCloud.points: {pts.shape[1]} columns but {len(self.fields)} fields {self.fields}"
            )
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"PointCloud.fields: duplicate names in {self.fields}")
        if not np.isfinite(self.timestamp):
            raise ValueError(f"PointCloud.timestamp: must be finite, got {self.timestamp}")
        object.__setattr__(self, "points", np.ascontiguousarray(pts, dtype=np.float32))
        object.__setattr__(self, "fields", tuple(self.fields))

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def xyz(self) -> np.ndarray:  # [N, 3]
        return self.points[:, :3]

    def field(self, name: str) -> np.ndarray:  # [N]
        try:
            return self.points[:, self.fields.index(name)]
        except ValueError:
            raise KeyError(f"PointCloud has no field {name!r}; fields are {self.fields}") from None

    def finite_mask(self) -> np.ndarray:  # [N] bool
        return np.isfinite(self.points).all(axis=1)

    def select(self, mask_or_index: np.ndarray) -> "PointCloud":
        return PointCloud(self.points[mask_or_index], self.fields, self.timestamp, self.frame_id)

    def with_points(self, points: np.ndarray, frame_id: str | None = None) -> "PointCloud":
        return PointCloud(points, self.fields, self.timestamp, self.frame_id if frame_id is None else frame_id)


@dataclass(frozen=True)
class CameraImage:
    """One camera exposure: ``image [H, W, 3]`` uint8 RGB taken through ``camera``.

    ``frame_id`` is the camera's sensor name in the calibration.
    """

    image: np.ndarray  # [H, W, 3] uint8 RGB
    camera: CameraModel
    timestamp: float
    frame_id: str

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"CameraImage.image ({self.frame_id}): expected [H, W, 3], got shape {img.shape}")
        if (img.shape[1], img.shape[0]) != (self.camera.width, self.camera.height):
            raise ValueError(
                f"CameraImage.image ({self.frame_id}): size {img.shape[1]}x{img.shape[0]} does not match "
                f"its camera model {self.camera.width}x{self.camera.height}"
            )
        if img.dtype != np.uint8:
            raise ValueError(f"CameraImage.image ({self.frame_id}): expected uint8, got {img.dtype}")
        if not np.isfinite(self.timestamp):
            raise ValueError(f"CameraImage.timestamp ({self.frame_id}): must be finite, got {self.timestamp}")

    @property
    def size(self) -> tuple[int, int]:  # (width, height)
        return self.camera.width, self.camera.height
