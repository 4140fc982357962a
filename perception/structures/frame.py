"""One synchronized multi-sensor sample, and the ground truth that goes with it.

A :class:`Frame` holds only what the car sees (model inputs); :class:`Targets` holds what a model
learns from (ground truth). They are separate types so ground truth cannot leak into features;
readers yield both together as a :class:`Sample`.
"""
from __future__ import annotations

import copyreg
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from perception.structures.boxes import Boxes3D
from perception.structures.calibration import Calibration
from perception.structures.depth import DepthMap
from perception.structures.pose import EgoPose, Trajectory
from perception.structures.sensors import CameraImage, PointCloud

# Frames and targets hold read-only mappings; let them pickle (dataloader workers, the sim cache)
# as the plain dicts they wrap, rebuilt read-only on load.
def _read_only(d: dict) -> MappingProxyType:
    return MappingProxyType(d)


copyreg.pickle(MappingProxyType, lambda m: (_read_only, (dict(m),)))


@dataclass(frozen=True)
class Frame:
    """Everything the car sees at ``timestamp``.

    ``lidar`` and ``cameras`` are keyed by sensor name (names in ``calib``). ``sweeps`` are earlier
    LiDAR sweeps (newest first) for multi-frame models. ``missing`` names the sensors the rig has
    but this frame lacks (a dropped camera, say): models must cope, and nothing is silently lost.
    """

    token: str
    timestamp: float
    calib: Calibration
    lidar: Mapping[str, PointCloud] = field(default_factory=dict)
    cameras: Mapping[str, CameraImage] = field(default_factory=dict)
    ego_pose: EgoPose | None = None
    sweeps: tuple[PointCloud, ...] = ()
    missing: tuple[str, ...] = ()
    source: str = ""
    meta: Mapping[str, object] = field(default_factory=dict)  # reader provenance (file paths, sequence)

    def __post_init__(self) -> None:
        if not np.isfinite(self.timestamp):
            raise ValueError(f"Frame.timestamp ({self.token}): must be finite, got {self.timestamp}")
        for kind, sensors in (("lidar", self.lidar), ("cameras", self.cameras)):
            for name in sensors:
                if name not in self.calib.ego_from_sensor:
                    raise ValueError(f"Frame.{kind}[{name!r}] ({self.token}): sensor missing from calibration")
        for name in self.cameras:
            if name not in self.calib.cameras:
                raise ValueError(f"Frame.cameras[{name!r}] ({self.token}): no camera model in calibration")
        object.__setattr__(self, "lidar", MappingProxyType(dict(self.lidar)))
        object.__setattr__(self, "cameras", MappingProxyType(dict(self.cameras)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        object.__setattr__(self, "sweeps", tuple(self.sweeps))
        object.__setattr__(self, "missing", tuple(self.missing))

    @property
    def points(self) -> PointCloud:
        """The one LiDAR sweep when the rig has one LiDAR (most datasets)."""
        if len(self.lidar) != 1:
            raise ValueError(f"Frame.points ({self.token}): {len(self.lidar)} LiDARs {tuple(self.lidar)}; index frame.lidar")
        return next(iter(self.lidar.values()))

    def points_in_ego(self) -> np.ndarray:
        """``[N, C]`` float32: every LiDAR's points with x, y, z moved into the ego frame (other fields kept).

        LiDARs are concatenated in ``self.lidar`` order; all must share one field layout.
        """
        clouds = list(self.lidar.values())
        if not clouds:
            raise ValueError(f"Frame.points_in_ego ({self.token}): no LiDAR in this frame (missing: {self.missing})")
        if any(c.fields != clouds[0].fields for c in clouds):
            raise ValueError(f"Frame.points_in_ego ({self.token}): LiDARs disagree on fields "
                             f"{[c.fields for c in clouds]}")
        out = []
        for c in clouds:
            p = np.array(c.points, dtype=np.float32)
            p[:, :3] = self.calib.transform("ego", c.frame_id).apply(p[:, :3].astype(np.float64))
            out.append(p)
        return np.concatenate(out)


@dataclass(frozen=True)
class Targets:
    """Ground truth for a :class:`Frame` (never a model input).

    ``boxes`` live in the ego frame. ``boxes_2d [N, 4]`` (x1, y1, x2, y2 in ``boxes_2d_camera``) and
    ``attributes`` (per-box arrays such as KITTI's truncation/occlusion/difficulty) are optional.
    ``ignore_regions_2d [M, 4]`` are image regions the labels mark as "don't care" (KITTI's DontCare).
    ``semantic`` holds per-camera class maps ``[H, W]`` uint8, ``bev_semantic [nx, ny]`` uint8 the
    BEV class map on the grid named in ``meta["bev_grid"]``, and ``agent_futures [N, T, 3]`` each
    box's future ``(x, y, heading)`` in the current ego frame at ``ego_future``'s timestamps.
    """

    boxes: Boxes3D
    boxes_2d: np.ndarray | None = None  # [N, 4]
    boxes_2d_camera: str | None = None
    attributes: Mapping[str, np.ndarray] = field(default_factory=dict)
    depth: Mapping[str, DepthMap] = field(default_factory=dict)
    ego_future: Trajectory | None = None
    driving_command: int | None = None
    ignore_regions_2d: np.ndarray | None = None  # [M, 4]
    semantic: Mapping[str, np.ndarray] = field(default_factory=dict)  # camera → [H, W] uint8
    bev_semantic: np.ndarray | None = None  # [nx, ny] uint8
    agent_futures: np.ndarray | None = None  # [N, T, 3]
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.boxes_2d is not None:
            b2 = np.asarray(self.boxes_2d, dtype=np.float32)
            if b2.shape != (n, 4):
                raise ValueError(f"Targets.boxes_2d: expected [{n}, 4], got shape {b2.shape}")
            object.__setattr__(self, "boxes_2d", b2)
        for k, v in self.attributes.items():
            if len(v) != n:
                raise ValueError(f"Targets.attributes[{k!r}]: {len(v)} values for {n} boxes")
        if self.agent_futures is not None:
            af = np.asarray(self.agent_futures, dtype=np.float64)
            if af.ndim != 3 or af.shape[0] != n or af.shape[2] != 3:
                raise ValueError(f"Targets.agent_futures: expected [{n}, T, 3], got shape {af.shape}")
            object.__setattr__(self, "agent_futures", af)
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        object.__setattr__(self, "depth", MappingProxyType(dict(self.depth)))
        object.__setattr__(self, "semantic", MappingProxyType(dict(self.semantic)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclass(frozen=True)
class Sample:
    """What a reader yields: the model input ``frame`` and its ground truth ``targets`` (None when unlabelled)."""

    frame: Frame
    targets: Targets | None = None
