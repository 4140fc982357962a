"""The sensor rig: where each sensor sits on the car and how each camera images."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from perception.geometry.camera_base import CameraModel
from perception.geometry.se3 import SE3


@dataclass(frozen=True)
class Calibration:
    """Extrinsics ``sensor → ego`` for every sensor, and the camera model of every camera.

    The ego frame is the dataset's reference body frame (for KITTI and mmdet3d's LiDAR-based
    datasets it is the LiDAR frame; for nuScenes and NAVSIM the rear-axle frame).
    """

    ego_from_sensor: Mapping[str, SE3]
    cameras: Mapping[str, CameraModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, t in self.ego_from_sensor.items():
            if not isinstance(t, SE3):
                raise ValueError(f"Calibration.ego_from_sensor[{name!r}]: expected SE3, got {type(t).__name__}")
        for name, cam in self.cameras.items():
            if not isinstance(cam, CameraModel):
                raise ValueError(f"Calibration.cameras[{name!r}]: expected a CameraModel, got {type(cam).__name__}")
            if name not in self.ego_from_sensor:
                raise ValueError(f"Calibration.cameras[{name!r}]: camera has no extrinsic in ego_from_sensor")
        object.__setattr__(self, "ego_from_sensor", MappingProxyType(dict(self.ego_from_sensor)))
        object.__setattr__(self, "cameras", MappingProxyType(dict(self.cameras)))

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(self.ego_from_sensor)

    def transform(self, target: str, source: str) -> SE3:
        """``T_target_from_source`` between two sensors (or ``"ego"``)."""
        return self._to_ego(target).inverse() @ self._to_ego(source)

    def _to_ego(self, name: str) -> SE3:
        if name == "ego":
            return SE3.identity()
        try:
            return self.ego_from_sensor[name]
        except KeyError:
            raise KeyError(f"Calibration has no sensor {name!r}; sensors are {self.sensors}") from None

    def project(self, points: np.ndarray, camera: str, source: str = "ego") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project ``points [N, 3]`` given in ``source`` into ``camera``.

        Returns ``uv [N, 2]``, ``depth [N]`` (z in the camera frame) and ``valid [N]``.
        """
        try:
            model = self.cameras[camera]
        except KeyError:
            raise KeyError(f"Calibration has no camera {camera!r}; cameras are {tuple(self.cameras)}") from None
        pts_cam = self.transform(camera, source).apply(np.asarray(points, dtype=np.float64))
        uv, valid = model.project(pts_cam)
        return uv, pts_cam[:, 2], valid
