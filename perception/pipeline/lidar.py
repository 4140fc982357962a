"""LiDAR preprocessing: non-finite filter, ego-motion compensation, multi-sweep accumulation, range crop, voxelization.

Per frame, for every LiDAR in ``Frame.lidar``:

1. points with a non-finite x, y, z, feature or time value are removed and counted;
2. **ego-motion compensation**: a spinning LiDAR measures each point in the sensor frame at its own
   capture time ``cloud.timestamp + time`` (the ``time`` field is the offset to the sweep's
   timestamp, <= 0, as :mod:`perception.sim` writes it). Each point is moved through the sensor's
   world pose at that time (ego poses interpolated by :func:`perception.geometry.motion.interpolate_poses`,
   slerp + lerp, then the sensor mount) into the ego frame at the frame's timestamp. The ego poses come from the frames seen so far
   (this frame's ``ego_pose`` and earlier ones): the first frame of a stream has no pose bracketing
   its sweep, so its points are moved with the calibration only and counted as ``uncompensated``;
3. **multi-sweep accumulation** (nuScenes / mmdet3d ``LoadPointsFromMultiSweeps``): the points of
   the last ``num_sweeps - 1`` frames are moved from their ego frame into the current one through the
   world poses, and a ``time_lag`` column (current time - sweep time, 0 for the current sweep) is
   appended. Readers that already load past sweeps (``Frame.sweeps``, in the current LiDAR frame, as
   :mod:`perception.data.mmdet3d_infos` does) are used instead of the stage's own history;
4. **range crop** to the configured grid's point-cloud range, in the ego frame (after compensation and
   accumulation, where the range is defined; mmdet3d's ``PointsRangeFilter`` comes after the sweep
   loader too), with counts;
5. **voxelization** with :func:`perception.ops.voxelize.voxelize` on the same grid.

Every point removed is counted by reason in :class:`~perception.pipeline.types.LidarCounts`.
The stage is stateful (pose and sweep history): frames must arrive in time order, as the runner and
the synchronizer deliver them; a timestamp going backwards (a new sequence) clears the history.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from perception.geometry.grid import VoxelGrid
from perception.geometry.motion import interpolate_poses, transform_at_times
from perception.ops.voxelize import voxelize
from perception.pipeline.types import LidarCounts, LidarTensors, Preprocessed, as_preprocessed
from perception.structures import Frame, PointCloud

TIME_LAG = "time_lag"
_TIME_EPS = 1e-6  # s; per-point times are float32 offsets


@dataclass(frozen=True)
class LidarConfig:
    """``grid``: the point-cloud range and voxel size (defined once, passed down).

    ``num_sweeps`` (K) counts the current sweep (mmdet3d's nuScenes configs use 10 sweeps at 20 Hz);
    past sweeps older than ``max_sweep_age`` seconds are not merged. ``features`` are the point fields
    kept after x, y, z; ``time_field`` names the per-point time offset (None: no compensation).
    """

    grid: VoxelGrid = field(default_factory=lambda: VoxelGrid(-50.0, -50.0, -3.0, 50.0, 50.0, 5.0, (0.2, 0.2, 0.2)))
    max_points_per_voxel: int = 10
    max_voxels: int | None = None
    num_sweeps: int = 1
    max_sweep_age: float = 1.0
    features: tuple[str, ...] = ("intensity",)
    time_field: str | None = "time"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.num_sweeps < 1:
            raise ValueError(f"LidarConfig.num_sweeps: >= 1, got {self.num_sweeps}")
        if self.max_sweep_age <= 0:
            raise ValueError(f"LidarConfig.max_sweep_age: > 0 s, got {self.max_sweep_age}")

    @property
    def point_cloud_range(self) -> tuple[float, float, float, float, float, float]:
        g = self.grid
        return (g.x_min, g.y_min, g.z_min, g.x_max, g.y_max, g.z_max)

    @property
    def fields(self) -> tuple[str, ...]:
        """Columns of ``LidarTensors.points``."""
        return ("x", "y", "z", *self.features, TIME_LAG)


@dataclass
class _Sweep:
    timestamp: float
    world_from_ego: np.ndarray  # [4, 4]
    points: np.ndarray  # [N, 3 + F] float64, ego frame at ``timestamp``, finite, not cropped


class LidarPreprocess:
    """``Frame | Preprocessed -> Preprocessed`` with ``lidar`` set to a :class:`LidarTensors`."""

    def __init__(self, config: LidarConfig | None = None) -> None:
        self.config = config or LidarConfig()
        self._poses: deque[tuple[float, np.ndarray]] = deque()  # (t, world_from_ego [4, 4]), increasing t
        self._sweeps: deque[_Sweep] = deque(maxlen=max(self.config.num_sweeps - 1, 1))
        self._last_t: float | None = None

    def reset(self) -> None:
        """Forget the stream's poses and sweeps (a new sequence)."""
        self._poses.clear()
        self._sweeps.clear()
        self._last_t = None

    def __call__(self, item: Frame | Preprocessed) -> Preprocessed:
        pre = as_preprocessed(item)
        return Preprocessed(pre.frame, self.process(pre.frame), pre.cameras)

    # ------------------------------------------------------------------------------------------
    def process(self, frame: Frame) -> LidarTensors:
        cfg = self.config
        if not frame.lidar:
            raise ValueError(f"LidarPreprocess ({frame.token}): frame has no LiDAR (missing: {frame.missing})")
        self._update_history(frame)
        counts = LidarCounts()
        current, compensated = [], True
        for cloud in frame.lidar.values():
            pts, c, ok = self._current(frame, cloud)
            current.append(pts)
            counts, compensated = counts + c, compensated and ok
        cur = np.concatenate(current)  # [N0, 3 + F] ego frame at frame.timestamp
        sweeps, lags, sweep_nonfinite = self._past(frame)
        if frame.ego_pose is not None:  # remember this frame for the next ones (before cropping)
            self._sweeps.appendleft(_Sweep(frame.timestamp, frame.ego_pose.world_from_ego.matrix, cur))
        keep = _in_range(cur, cfg.point_cloud_range)
        counts = counts + LidarCounts(out_of_range=int((~keep).sum()), kept_current=int(keep.sum()))
        blocks = [np.column_stack([cur[keep], np.zeros(int(keep.sum()))])]
        n_sweep = sum(len(s) for s in sweeps)
        kept_sweeps = 0
        for s, lag in zip(sweeps, lags):
            k = _in_range(s, cfg.point_cloud_range)
            kept_sweeps += int(k.sum())
            blocks.append(np.column_stack([s[k], np.full(int(k.sum()), lag)]))
        counts = counts + LidarCounts(sweep_input=n_sweep + sweep_nonfinite, sweep_nonfinite=sweep_nonfinite,
                                      sweep_out_of_range=n_sweep - kept_sweeps, kept_sweeps=kept_sweeps)
        points = torch.from_numpy(np.concatenate(blocks).astype(np.float32))  # [N, 3 + F + 1]
        vox = voxelize(points, cfg.grid.voxel_size, cfg.point_cloud_range, cfg.max_points_per_voxel,
                       cfg.max_voxels, cfg.backend)
        counts = counts + LidarCounts(in_voxels=int(vox.num_points.sum()), voxel_nonfinite=vox.dropped_nonfinite,
                                      voxel_out_of_range=vox.dropped_out_of_range,
                                      voxel_over_capacity=vox.dropped_over_capacity)
        counts.check()
        return LidarTensors(frame.token, frame.timestamp, points, cfg.fields, vox, counts,
                            num_sweeps=1 + len(sweeps), motion_compensated=compensated)

    # ------------------------------------------------------------------------------------------
    def _update_history(self, frame: Frame) -> None:
        """Keep ego poses and past sweeps of this stream; a backwards timestamp starts a new stream."""
        t = frame.timestamp
        if self._last_t is not None and t <= self._last_t:
            self.reset()
        self._last_t = t
        pose = frame.ego_pose
        if pose is not None and (not self._poses or pose.timestamp > self._poses[-1][0]):
            self._poses.append((pose.timestamp, pose.world_from_ego.matrix))
        horizon = t - self.config.max_sweep_age - 1.0  # poses a little older than the oldest sweep
        while len(self._poses) > 2 and self._poses[1][0] < horizon:
            self._poses.popleft()

    def _columns(self, cloud: PointCloud) -> np.ndarray:
        """``[N, 3 + F]`` float64: x, y, z and the configured features."""
        cols = [cloud.xyz.astype(np.float64)] + [cloud.field(f).astype(np.float64)[:, None]
                                                  for f in self.config.features]
        return np.concatenate(cols, axis=1)

    def _current(self, frame: Frame, cloud: PointCloud) -> tuple[np.ndarray, LidarCounts, bool]:
        """One current sweep → ``([N, 3 + F] ego frame at frame.timestamp, counts, compensated)``."""
        pts = self._columns(cloud)
        tf = self.config.time_field
        times = cloud.field(tf).astype(np.float64) if tf is not None and tf in cloud.fields else None
        finite = np.isfinite(pts).all(1) if times is None else np.isfinite(pts).all(1) & np.isfinite(times)
        n_in, pts = len(pts), pts[finite]
        ego_from_sensor = frame.calib.transform("ego", cloud.frame_id).matrix
        out = pts.copy()
        compensated = False
        if times is not None and frame.ego_pose is not None and len(pts):
            abs_t = cloud.timestamp + times[finite]
            pose_t = np.array([p[0] for p in self._poses])
            if len(pose_t) >= 2 and pose_t[0] <= abs_t.min() + _TIME_EPS and pose_t[-1] >= abs_t.max() - _TIME_EPS:
                abs_t = np.clip(abs_t, pose_t[0], pose_t[-1])  # float32 time offsets: ~1e-8 s of rounding
                out[:, :3] = self._compensate(pts[:, :3], abs_t, pose_t, ego_from_sensor, frame)
                compensated = True
        if not compensated:  # rigid: sensor frame → ego frame through the calibration only
            out[:, :3] = pts[:, :3] @ ego_from_sensor[:3, :3].T + ego_from_sensor[:3, 3]
        c = LidarCounts(input=n_in, nonfinite=n_in - len(pts), uncompensated=0 if compensated else len(pts))
        return out, c, compensated or not len(pts)

    def _compensate(self, xyz, abs_t, pose_t, ego_from_sensor, frame: Frame) -> np.ndarray:
        """``xyz [N, 3]`` sensor frame at ``abs_t [N]`` → ego frame at the frame's timestamp.

        The *ego* poses are interpolated (they are what is measured) and the rigid mount composed after,
        rather than interpolating sensor poses (as :func:`perception.geometry.motion.motion_compensate`
        does), which would bend the lever arm of a sensor mounted off the ego origin while the car turns.
        """
        poses = np.stack([p[1] for p in self._poses])
        ego_from_world = np.linalg.inv(frame.ego_pose.world_from_ego.matrix)
        return transform_at_times(xyz, abs_t, lambda times: ego_from_world @ interpolate_poses(pose_t, poses, times)
                                  @ ego_from_sensor)  # ego(now) ← sensor(at t)

    def _past(self, frame: Frame) -> tuple[list[np.ndarray], list[float], int]:
        """Past sweeps in the current ego frame (newest first), their time lags, and non-finite points removed."""
        k = self.config.num_sweeps - 1
        if k == 0:
            return [], [], 0
        out, lags, nonfinite = [], [], 0
        if frame.sweeps:  # reader-provided, already in the current frame of their sensor
            for sw in frame.sweeps[:k]:
                pts = self._columns(sw)
                ok = np.isfinite(pts).all(1)
                nonfinite += int((~ok).sum())
                pts = pts[ok]
                pts[:, :3] = frame.calib.transform("ego", sw.frame_id).apply(pts[:, :3])
                out.append(pts)
                lags.append(frame.timestamp - sw.timestamp)
            return out, lags, nonfinite
        if frame.ego_pose is None:
            return [], [], 0
        ego_from_world = np.linalg.inv(frame.ego_pose.world_from_ego.matrix)
        for sw in list(self._sweeps)[:k]:
            if frame.timestamp - sw.timestamp > self.config.max_sweep_age:
                break
            m = ego_from_world @ sw.world_from_ego  # current ego ← past ego
            pts = sw.points.copy()
            pts[:, :3] = pts[:, :3] @ m[:3, :3].T + m[:3, 3]
            out.append(pts)
            lags.append(frame.timestamp - sw.timestamp)
        return out, lags, 0


def _in_range(points: np.ndarray, pcr) -> np.ndarray:
    """``[N]`` bool: ``min <= p < max`` on x, y, z."""
    lo, hi = np.asarray(pcr[:3]), np.asarray(pcr[3:])
    xyz = points[:, :3]
    return ((xyz >= lo) & (xyz < hi)).all(1)
