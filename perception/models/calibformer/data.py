"""CalibFormer's typed inputs and targets, built from any :class:`~perception.structures.Frame`.

One sample is one (camera, LiDAR) pair of one frame:

- :class:`CalibInput` (what the car sees): the camera image preprocessed to the model's size
  (``image [3, H, W]`` float, ImageNet-normalised, by :class:`perception.pipeline.camera.CameraPreprocess`,
  with the camera model rescaled to match), the LiDAR points ``[N, 3]`` in the LiDAR frame (optionally with their
  ``intensity [N]`` in [0, 1]) *deskewed* to the camera's exposure where the sweep has per-point times and the
  frame the car's odometry, and the *current* (possibly miscalibrated) extrinsic ``init [4, 4]`` camera-from-LiDAR.
  A spinning LiDAR measures each point at its own time: in the synthetic world the front of a sweep is 50 ms older
  than the image, 40 cm at 8 m/s along the road, an offset no extrinsic explains (and no network learns);
- :class:`CalibTarget` (ground truth, training and evaluation only): the true extrinsic.

:class:`CalibSimDataset` draws pairs from the synthetic world (the navsim rig's three pinholes and
its HDL-64 LiDAR) and miscalibrates them with :func:`~.geometry.sample_miscalibration`: randomly
per call for training, from a seed per index for evaluation (the same perturbations every run).
Frames are rendered once through :class:`perception.data.dataset.SimDataset` (sharing its on-disk
cache) and kept compact (the resized image and at most ``max_points`` points near the camera's view).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from perception.geometry.camera_base import CameraModel
from perception.models.calibformer.geometry import DEFAULT_RANGE, sample_miscalibration
from perception.structures import Frame


@dataclass(frozen=True)
class CalibInput:
    """One camera-LiDAR pair: ``image [3, H, W]`` float32 normalised, its ``camera`` at ``H x W``,
    ``points [N, 3]`` float32 in the LiDAR frame (finite), ``init [4, 4]`` float64 camera-from-LiDAR, and optionally
    the points' ``intensity [N]`` float32 in [0, 1] (for a model with ``intensity=True``). ``deskewed``: the points
    were moved to the camera's exposure time (:func:`calib_input`); False: as measured. ``moving``: the number of
    points left out for lying on a moving object (:func:`calib_input`'s ``movers``)."""

    token: str
    image: torch.Tensor
    camera: CameraModel
    points: np.ndarray
    init: np.ndarray
    intensity: np.ndarray | None = None
    deskewed: bool = False
    moving: int = 0

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[0] != 3:
            raise ValueError(f"CalibInput ({self.token}): image must be [3, H, W], got {tuple(self.image.shape)}")
        if tuple(self.image.shape[1:]) != (self.camera.height, self.camera.width):
            raise ValueError(f"CalibInput ({self.token}): image {tuple(self.image.shape[1:])} does not match its camera "
                             f"{self.camera.height}x{self.camera.width}")
        pts = np.asarray(self.points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"CalibInput ({self.token}): points must be [N, 3], got {pts.shape}")
        if len(pts) == 0:
            raise ValueError(f"CalibInput ({self.token}): no LiDAR points")
        if not np.isfinite(pts).all():
            raise ValueError(f"CalibInput ({self.token}): non-finite points (filter them with finite_points first)")
        init = np.asarray(self.init, np.float64)
        if init.shape != (4, 4) or not np.isfinite(init).all():
            raise ValueError(f"CalibInput ({self.token}): init must be a finite [4, 4] extrinsic, got {init.shape}")
        object.__setattr__(self, "points", np.ascontiguousarray(pts, np.float32))
        object.__setattr__(self, "init", init)
        if self.intensity is not None:
            i = np.asarray(self.intensity)
            if i.shape != (len(pts),) or not np.isfinite(i).all():
                raise ValueError(f"CalibInput ({self.token}): intensity must be finite [{len(pts)}], got {i.shape}")
            object.__setattr__(self, "intensity", np.ascontiguousarray(i, np.float32))


@dataclass(frozen=True)
class CalibTarget:
    """The true camera-from-LiDAR extrinsic ``cam_from_lidar [4, 4]``."""

    cam_from_lidar: np.ndarray


@dataclass(frozen=True)
class CalibSample:
    inputs: CalibInput
    target: CalibTarget | None = None


def finite_points(points: np.ndarray, columns: int = 3) -> tuple[np.ndarray, int]:
    """``points [N, >=columns]`` → the rows whose first ``columns`` values are finite ``[M, columns]`` float32 and the
    number left out (documented fallback: NaN/inf dropped, counted)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < max(3, columns):
        raise ValueError(f"finite_points: expected [N, >={max(3, columns)}] points, got shape {pts.shape}")
    ok = np.isfinite(pts[:, :columns]).all(1)
    return np.ascontiguousarray(pts[ok, :columns], np.float32), int((~ok).sum())


def unit_intensity(values: np.ndarray) -> np.ndarray:
    """LiDAR intensities ``[N]`` → [0, 1]: values already in [0, 1] (KITTI, the synthetic world) are kept, 8-bit
    ones (most ROS drivers, 0-255) divided by 255, anything larger by its maximum."""
    v = np.asarray(values, np.float32)
    top = float(v.max(initial=0.0))
    scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top
    return np.clip(v / scale, 0.0, 1.0)


def view_points(points: np.ndarray, cam_from_lidar: np.ndarray, camera: CameraModel, margin_deg: float = 25.0,
                max_depth: float = 80.0, max_points: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """The rows ``[M, C]`` of ``points [N, C]`` (xyz first, LiDAR frame) within ``margin_deg`` of the camera's view and
    ``max_depth`` of it, at most ``max_points`` of them (a uniform random subset). The margin keeps points a
    miscalibration can bring into view."""
    cam = points[:, :3].astype(np.float64) @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]
    fx = getattr(camera, "fx", None)
    z = cam[:, 2]
    keep = (z > 0.1) & (np.linalg.norm(cam, axis=1) < max_depth)
    if fx is not None:  # pinhole: a widened frustum; other models: the front half-space
        half_w = np.arctan(max(camera.cx + 0.5, camera.width - camera.cx - 0.5) / camera.fx) + np.radians(margin_deg)
        half_h = np.arctan(max(camera.cy + 0.5, camera.height - camera.cy - 0.5) / camera.fy) + np.radians(margin_deg)
        keep &= (np.abs(np.arctan2(cam[:, 0], z)) < half_w) & (np.abs(np.arctan2(cam[:, 1], z)) < half_h)
    idx = np.flatnonzero(keep)
    if max_points is not None and len(idx) > max_points:
        idx = np.sort((rng or np.random.default_rng(0)).choice(idx, max_points, replace=False))
    return points[idx]


def calib_input(frame: Frame, camera: str, size: tuple[int, int], lidar: str | None = None,
                init: np.ndarray | None = None, max_points: int | None = None,
                intensity: bool = False, deskew: bool = True,
                movers: np.ndarray | None = None) -> tuple[CalibInput, int]:
    """``frame``'s ``camera`` and ``lidar`` (default: the only LiDAR) as a :class:`CalibInput` at ``size = (W, H)``.

    ``init`` is the extrinsic to start from (default: the frame's own calibration). ``intensity``: carry the
    points' intensities (:func:`unit_intensity`; the cloud must have an ``intensity`` field). ``deskew``: move the
    points into the LiDAR frame at the camera's timestamp
    (:func:`perception.geometry.motion.deskew_by_odometry`), where the cloud has a ``time`` field (offset to its
    timestamp) and the frame the car's odometry (``meta["ego_speed"]``, ``meta["ego_yaw_rate"]``); otherwise the
    points stay as measured and the input says so (``deskewed=False``). ``movers``: the frame's labelled objects,
    ``boxes [M, 9]`` with velocities in the ego frame at the frame's timestamp; the points on those moving faster than
    0.3 m/s are left out (:func:`perception.geometry.motion.moving_points`: odometry deskews the static world, not
    them), those in the camera's view counted in ``CalibInput.moving``; it needs the points' times (deskewing).
    Returns the input and the number of points left out for a non-finite coordinate (or intensity, or time).
    """
    from perception.pipeline.camera import CameraConfig, CameraPreprocess

    if camera not in frame.cameras:
        raise KeyError(f"calib_input ({frame.token}): no image from camera {camera!r}; cameras are {tuple(frame.cameras)}")
    if lidar is None:
        if len(frame.lidar) != 1:
            raise ValueError(f"calib_input ({frame.token}): {len(frame.lidar)} LiDARs {tuple(frame.lidar)}; name one")
        lidar = next(iter(frame.lidar))
    cloud = frame.lidar[lidar]
    if cloud.frame_id != lidar:
        raise ValueError(f"calib_input ({frame.token}): points of {lidar!r} are in frame {cloud.frame_id!r}, want the sensor frame")
    cols = [0, 1, 2]
    if intensity:
        if "intensity" not in cloud.fields:
            raise ValueError(f"calib_input ({frame.token}): the model reads LiDAR intensity but {lidar!r} has fields "
                             f"{cloud.fields}")
        cols.append(cloud.fields.index("intensity"))
    speed, yaw_rate = frame.meta.get("ego_speed"), frame.meta.get("ego_yaw_rate")
    deskew = bool(deskew and "time" in cloud.fields and speed is not None and yaw_rate is not None
                  and np.isfinite([speed, yaw_rate]).all())
    if movers is not None and not deskew:
        raise ValueError(f"calib_input ({frame.token}): leaving out moving objects' points needs them deskewed (per-point "
                         "times and the car's odometry)")
    if deskew:
        cols.append(cloud.fields.index("time"))
    pts, n_bad = finite_points(cloud.points[:, cols], len(cols))
    if intensity:  # scaled over the whole sweep, so the scale does not depend on what the camera sees
        pts[:, 3] = unit_intensity(pts[:, 3])
    if len(pts) == 0:
        raise ValueError(f"calib_input ({frame.token}): LiDAR {lidar!r} has no finite points ({n_bad} non-finite)")
    image = frame.cameras[camera]
    n_moving = 0
    if deskew:
        from perception.geometry.motion import deskew_by_odometry

        times = cloud.timestamp + pts[:, -1].astype(np.float64)
        ego_from_lidar = frame.calib.transform("ego", lidar).matrix
        pts[:, :3] = deskew_by_odometry(pts[:, :3], times, image.timestamp, frame.timestamp, ego_from_lidar, speed,
                                        yaw_rate)
        pts = pts[:, :-1]
        if movers is not None:  # tested in the ego frame of the boxes, the frame's timestamp
            from perception.geometry.motion import moving_points, planar_twist_poses
            from perception.geometry.se3 import transform_points

            frame_from_image = planar_twist_poses(speed, yaw_rate, np.array([image.timestamp - frame.timestamp]))[0]
            on = moving_points(transform_points(frame_from_image @ ego_from_lidar, pts[:, :3].astype(np.float64)), times,
                               movers, frame.timestamp)
            pts, pts_moving = pts[~on], pts[on]
            if len(pts) == 0:
                raise ValueError(f"calib_input ({frame.token}): every point of {lidar!r} is on a moving object")
    cam = CameraPreprocess(CameraConfig(size=tuple(size))).process(image)
    if cam.camera is None:
        raise ValueError(f"calib_input ({frame.token}): camera model {type(frame.cameras[camera].camera).__name__} "
                         "cannot be rescaled")
    t = frame.calib.transform(camera, lidar).matrix if init is None else np.asarray(init, np.float64)
    if movers is not None:  # counted where the camera could see them
        n_moving = len(view_points(pts_moving, t, cam.camera))
    pts = view_points(pts, t, cam.camera, max_points=max_points)
    return CalibInput(f"{frame.token}/{camera}", cam.image, cam.camera, pts[:, :3], t, pts[:, 3] if intensity else None,
                      deskew, n_moving), n_bad


class CalibSimDataset(Dataset):
    """Camera-LiDAR pairs of synthetic sequences ``seeds`` (frames ``0..frames-1``, every camera of ``cameras``).

    ``ranges``: ``[(max_deg, max_m), ...]``; each sample's miscalibration is drawn from one of them (uniformly
    chosen), so a mix of wide and narrow ranges teaches both the first step and the refinement steps.
    ``fixed_seed``: None draws fresh perturbations on every call (training); an int makes sample ``i``'s
    perturbation a function of ``(fixed_seed, i)`` (evaluation). ``cache_dir`` keeps the compact pairs
    (``calib_<key>.pkl``) on disk, ``sim_cache_dir`` the rendered frames (``SimDataset``'s cache; with
    ``sim_frames=30`` the GaussianFusion config's renders are reused). ``intensity``: the samples carry the
    points' intensities too. ``mount_jitter=(deg, m)``: every sequence's cameras mounted off the rig
    (``SimDataset``), so the true extrinsic varies and the LiDAR's scan pattern does not give it away.
    ``deskew``: the sweeps moved to the cameras' exposure (:func:`calib_input`); False keeps them as measured (the
    configs recorded before deskewing existed, whose figures were measured so). ``drop_moving``: leave out the points
    on moving road users (``calib_input``'s ``movers``, from the frames' labelled boxes; needs ``deskew``), logged
    with their share when the pairs are built.
    """

    def __init__(self, seeds: Sequence[int] = (0,), frames: int = 4, cameras: Sequence[str] = ("CAM_L0", "CAM_F0", "CAM_R0"),
                 size: Sequence[int] = (160, 96), max_points: int = 20000,
                 ranges: Sequence[Sequence[float]] = (DEFAULT_RANGE,), fixed_seed: int | None = None,
                 cache_dir: str | Path | None = None, sim_cache_dir: str | Path | None = None,
                 sim_frames: int | None = None, intensity: bool = False,
                 mount_jitter: Sequence[float] | None = None, deskew: bool = True, drop_moving: bool = False) -> None:
        self.deskew, self.drop_moving = bool(deskew), bool(drop_moving)
        if self.drop_moving and not self.deskew:
            raise ValueError("CalibSimDataset: drop_moving needs deskew=True (the moving-object test uses point times)")
        self.seeds, self.frames = [int(s) for s in seeds], int(frames)
        self.cameras, self.size = tuple(cameras), (int(size[0]), int(size[1]))
        self.max_points = int(max_points)
        self.ranges = [(float(r), float(t)) for r, t in ranges]
        if not self.ranges or any(r < 0 or t < 0 for r, t in self.ranges):
            raise ValueError(f"CalibSimDataset: ranges must be non-empty (max_deg, max_m) pairs >= 0, got {ranges!r}")
        self.fixed_seed = fixed_seed
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.sim_cache_dir = sim_cache_dir
        self.sim_frames = int(sim_frames or frames)  # length of the simulated sequences (shares SimDataset's cache)
        if self.frames > self.sim_frames:
            raise ValueError(f"CalibSimDataset: frames={frames} > sim_frames={self.sim_frames}")
        self.intensity = bool(intensity)
        self.mount_jitter = None if mount_jitter is None else (float(mount_jitter[0]), float(mount_jitter[1]))
        self.metainfo = {"source": "sim", "cameras": self.cameras}
        self._pairs: list | None = None
        self._rng = np.random.default_rng()

    def _key(self) -> str:
        spec = (self.seeds, self.frames, self.sim_frames, self.cameras, self.size, self.max_points)
        if self.intensity:  # (the key of a cache without intensities stays what it was)
            spec += ("intensity",)
        if self.mount_jitter is not None:
            spec += (("mount_jitter", self.mount_jitter),)
        if self.deskew:
            spec += ("deskew",)
        if self.drop_moving:
            spec += ("drop_moving",)
        return hashlib.sha1(repr(spec).encode()).hexdigest()[:12]

    def pairs(self) -> list[tuple]:
        """``(token, image, camera, points, true extrinsic[, intensity])`` per pair, built once (and cached on disk)."""
        if self._pairs is not None:
            return self._pairs
        path = self.cache_dir / f"calib_{self._key()}.pkl" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            import pickle

            self._pairs = pickle.loads(path.read_bytes())  # a cache this class wrote itself
            return self._pairs
        pairs, moving = [], 0
        for sample in self.sim_samples():
            movers = sample.targets.boxes.tensor if self.drop_moving else None
            for cam in self.cameras:
                x, _ = calib_input(sample.frame, cam, self.size, max_points=self.max_points,
                                   intensity=self.intensity, deskew=self.deskew, movers=movers)
                if x.deskewed != self.deskew:
                    raise ValueError(f"CalibSimDataset: {x.token} could not be deskewed (no point times or odometry)")
                moving += x.moving
                pairs.append((x.token, x.image.half(), x.camera, x.points, x.init)
                             + ((x.intensity,) if self.intensity else ()))
        if path is not None:
            import os
            import pickle

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(pairs, protocol=5))
            os.replace(tmp, path)
        if self.drop_moving:
            from mmengine.logging import print_log

            print_log(f"CalibSimDataset: left out {moving} points on moving road users in the cameras' views, "
                      f"{moving / max(len(pairs), 1):.0f} per pair", logger="current")
        self._pairs = pairs
        return pairs

    def sim_samples(self):
        """The rendered frames the pairs come from (``SimDataset`` samples, sequence by sequence, in time order), from
        the render cache where present."""
        from perception.data.dataset import SimDataset

        sim = SimDataset(self.seeds, frames=self.sim_frames, lidar="hdl64", render_cameras=True, rigs=("navsim",),
                         cache=False, cache_dir=self.sim_cache_dir, mount_jitter=self.mount_jitter)
        for s in range(len(self.seeds)):
            for k in range(self.frames):
                yield sim[s * self.sim_frames + k]

    def __len__(self) -> int:
        return len(self.seeds) * self.frames * len(self.cameras)

    def __getitem__(self, i: int) -> CalibSample:
        if not 0 <= i < len(self):
            raise IndexError(f"CalibSimDataset: index {i} out of range for {len(self)} samples")
        token, image, camera, points, truth, *inten = self.pairs()[i]
        rng = self._rng if self.fixed_seed is None else np.random.default_rng([self.fixed_seed, i])
        max_deg, max_m = self.ranges[int(rng.integers(len(self.ranges)))]
        init = sample_miscalibration(rng, max_deg, max_m).apply(truth)
        x = CalibInput(token, image.float(), camera, points, init, inten[0] if inten else None, self.deskew)
        return CalibSample(x, CalibTarget(truth))


def collate_calib(batch: list[CalibSample]) -> list[CalibSample]:
    """mmengine ``collate_fn``: a batch stays a list of typed samples."""
    return list(batch)
