"""Motion parallax: refining a camera-LiDAR extrinsic with the car's own motion over a sequence.

A static point ``X`` of frame ``i``'s sweep (LiDAR frame, at the image's time) is seen in camera image ``i`` at
``π(E X)`` and, after the LiDAR has moved by ``M = lidar_j ← lidar_i`` (from the car's poses), in image ``j`` at
``π(E M X)``. With the right extrinsic ``E`` the two pixels show the same surface. One image cannot tell a sideways
offset from a small yaw (both move a far point alike); two images taken a few metres apart can, since the offset
changes how near and far points move between them. :func:`parallax_score` is the normalised cross-correlation of the
two images' band-passed grey levels sampled at the points' two projections (points hidden behind other points in
either view left out), averaged over pairs of frames ``gaps`` apart, both ways; :func:`refine_parallax` maximises it
from a sequence's estimate by a compass search (pattern search) over the six parameters, bounded per axis.

The objective is the photometric consistency of direct visual odometry (Engel et al., "Direct Sparse Odometry",
TPAMI 2018) with the depths taken from the LiDAR and the motion from the car, used, as in motion-based targetless
calibration (Taylor & Nieto, "Motion-Based Calibration of Multimodal Sensor Extrinsics and Timing Offset
Estimation", T-RO 2016), to pin down the extrinsic. It needs ego poses at the images' times (``Frame.ego_pose``) and
full-resolution images; it is an option of :meth:`~.calibrate.Calibrator.calibrate` and of the tools (README,
"CalibFormer": the figures, and the rigs it makes worse).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation

from perception.geometry import se3
from perception.geometry.camera_base import CameraModel
from perception.models.calibformer.geometry import Miscalibration
from perception.structures import Frame


@dataclass(frozen=True)
class ParallaxView:
    """One frame of a (camera, LiDAR) pair: ``image [H, W]`` float32 band-passed grey level at the camera's
    resolution, its ``camera``, ``points [N, 3]`` float32 (LiDAR frame at the image's time, finite) and
    ``world_from_lidar [4, 4]`` at the image's time."""

    token: str
    image: np.ndarray
    camera: CameraModel
    points: np.ndarray
    world_from_lidar: np.ndarray

    def __post_init__(self) -> None:
        if self.image.shape != (self.camera.height, self.camera.width):
            raise ValueError(f"ParallaxView ({self.token}): image {self.image.shape} does not match its camera "
                             f"{self.camera.height}x{self.camera.width}")
        if self.points.ndim != 2 or self.points.shape[1] != 3 or not np.isfinite(self.points).all():
            raise ValueError(f"ParallaxView ({self.token}): points must be finite [N, 3], got {self.points.shape}")
        w = np.asarray(self.world_from_lidar, np.float64)
        if w.shape != (4, 4) or not np.isfinite(w).all():
            raise ValueError(f"ParallaxView ({self.token}): world_from_lidar must be a finite [4, 4], got {w.shape}")
        object.__setattr__(self, "world_from_lidar", w)


def band_pass(grey: np.ndarray, fine: float = 1.0, coarse: float = 4.0) -> np.ndarray:
    """``grey [H, W]`` → difference of Gaussians (``fine`` minus ``coarse`` px) ``[H, W]`` float32: the texture that
    moves with the surfaces, without the shading and exposure that differ between frames."""
    g = np.asarray(grey, np.float32)
    return gaussian_filter(g, fine) - gaussian_filter(g, coarse)


def parallax_view(frame: Frame, camera: str, lidar: str | None = None, max_points: int = 4000,
                  movers: np.ndarray | None = None, seed: int = 0) -> ParallaxView:
    """``frame``'s ``camera`` and ``lidar`` as a :class:`ParallaxView`, at the camera's own resolution: the sweep
    deskewed to the image's time where it can be (:func:`~.data.calib_input`; ``movers``: boxes whose points to leave
    out), at most ``max_points`` of its points near the camera's view (a random subset, ``seed``), and the LiDAR's pose
    from ``frame.ego_pose`` carried to the image's time by the frame's odometry (``meta["ego_speed"]``,
    ``meta["ego_yaw_rate"]``; none: the image is taken at the frame's time)."""
    from perception.geometry.motion import planar_twist_poses
    from perception.models.calibformer.data import calib_input

    if frame.ego_pose is None:
        raise ValueError(f"parallax_view ({frame.token}): the parallax refinement needs the car's pose at every frame "
                         "(Frame.ego_pose); this source gives none")
    if camera not in frame.cameras:
        raise KeyError(f"parallax_view ({frame.token}): no image from camera {camera!r}")
    model = frame.calib.cameras[camera]
    x, _ = calib_input(frame, camera, (model.width, model.height), lidar=lidar, movers=movers)
    lidar = lidar or next(iter(frame.lidar))
    pts = x.points
    if len(pts) > max_points:
        pts = pts[np.sort(np.random.default_rng(seed).choice(len(pts), max_points, replace=False))]
    speed, yaw_rate = frame.meta.get("ego_speed"), frame.meta.get("ego_yaw_rate")
    dt = frame.cameras[camera].timestamp - frame.timestamp
    frame_from_image = np.eye(4)
    if dt and speed is not None and yaw_rate is not None:
        frame_from_image = planar_twist_poses(float(speed), float(yaw_rate), np.array([dt]))[0]
    world_from_lidar = (frame.ego_pose.world_from_ego.matrix @ frame_from_image
                        @ frame.calib.transform("ego", lidar).matrix)
    img = x.image.numpy()  # normalised per channel; the band-pass and the correlation ignore gain and offset
    return ParallaxView(x.token, band_pass(img.mean(0)), x.camera, pts, world_from_lidar)


def frame_pairs(n: int, gaps: Sequence[int] = (2, 3, 4)) -> list[tuple[int, int]]:
    """Ordered pairs ``(i, j)`` of ``n`` frames with ``|i - j|`` in ``gaps``, both ways."""
    return [(i, i + s * g) for g in gaps for s in (1, -1) for i in range(n) if 0 <= i + s * g < n]


def _nearest_in_cell(uv: np.ndarray, z: np.ndarray, shape: tuple[int, int], cell: int, slack: tuple[float, float]
                     ) -> np.ndarray:
    """Which of the points at ``uv [N, 2]`` with depth ``z [N]`` are the nearest in their ``cell``-pixel cell (within
    ``slack = (relative, metres)``): a z-buffer of the points themselves, so a surface the LiDAR sees but the camera
    has behind another one does not count."""
    w = shape[1] // cell + 1
    cells = ((uv + 0.5) // cell).astype(np.int64)  # pixel edges at -0.5: an image's first cell starts there
    idx = cells[:, 1] * w + cells[:, 0]
    near = np.full((shape[0] // cell + 1) * w, np.inf)
    np.minimum.at(near, idx, z)
    return z <= near[idx] * (1 + slack[0]) + slack[1]


def _project(view: ParallaxView, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[N, 2]`` and which are in the image and over 0.5 m in front (``project``'s validity)."""
    uv, ok = view.camera.project(points_cam)
    return uv, ok & (points_cam[:, 2] > 0.5)


def parallax_score(views: Sequence[ParallaxView], cam_from_lidar: np.ndarray, gaps: Sequence[int] = (2, 3, 4),
                   cell: int = 4, slack: tuple[float, float] = (0.05, 0.2), min_points: int = 50) -> float:
    """Mean over :func:`frame_pairs` of ``views`` (frames of one camera and LiDAR, in order) of the normalised
    cross-correlation of frame ``i``'s and frame ``j``'s band-passed images at the projections of frame ``i``'s points
    through ``cam_from_lidar [4, 4]``, directly and moved by the LiDAR's motion ``lidar_j ← lidar_i``; only points in
    both images and the nearest in their ``cell`` there (:func:`_nearest_in_cell`). A pair with fewer than
    ``min_points`` such points is left out; none left: ``nan``."""
    e = np.asarray(cam_from_lidar, np.float64)
    own = []  # each frame's points in its own image: (depth, pixels, valid), shared by every pair it starts
    for v in views:
        x = v.points @ e[:3, :3].T + e[:3, 3]
        own.append((x[:, 2], *_project(v, x)))
    scores = []
    for i, j in frame_pairs(len(views), gaps):
        a, b = views[i], views[j]
        motion = se3.inverse(b.world_from_lidar) @ a.world_from_lidar
        xb = a.points @ (e[:3, :3] @ motion[:3, :3]).T + (e[:3, :3] @ motion[:3, 3] + e[:3, 3])
        za, uva, oka = own[i]
        uvb, okb = _project(b, xb)
        ok = oka & okb
        if ok.sum() < min_points:
            continue
        uva, uvb, za, zb = uva[ok], uvb[ok], za[ok], xb[ok, 2]
        vis = (_nearest_in_cell(uva, za, a.image.shape, cell, slack)
               & _nearest_in_cell(uvb, zb, b.image.shape, cell, slack))
        if vis.sum() < min_points:
            continue
        va = map_coordinates(a.image, [uva[vis, 1], uva[vis, 0]], order=1, mode="nearest")
        vb = map_coordinates(b.image, [uvb[vis, 1], uvb[vis, 0]], order=1, mode="nearest")
        va, vb = va - va.mean(), vb - vb.mean()
        den = np.sqrt((va * va).sum() * (vb * vb).sum())
        if den > 1e-12:
            scores.append(float((va * vb).sum() / den))
    return float(np.mean(scores)) if scores else float("nan")


@dataclass(frozen=True)
class ParallaxRefinement:
    """:func:`refine_parallax`'s result: ``start`` and ``estimate [4, 4]``, the score at each and the number of scores
    evaluated."""

    start: np.ndarray
    estimate: np.ndarray
    start_score: float
    score: float
    evaluations: int

    @property
    def taken(self) -> bool:
        """Whether the estimate moved (False: no step raised the score, or the start scored ``nan``: the start)."""
        return bool(self.score > self.start_score)


def refine_parallax(views: Sequence[ParallaxView], start: np.ndarray, gaps: Sequence[int] = (2, 3, 4),
                    step_deg: float = 0.2, step_m: float = 0.04, min_step_m: float = 0.005, max_deg: float = 1.0,
                    max_m: float = 0.15, max_evaluations: int = 2000) -> ParallaxRefinement:
    """``start [4, 4]`` moved to maximise :func:`parallax_score` over ``views`` by a compass search: each of the
    correction's six components (rotation vector about the camera axes, translation along them; geometry.py's
    convention) is tried a step up and down, the best rise taken; when none rises both steps (``step_deg``,
    ``step_m``) halve, down to ``min_step_m``. Each component stays within ``max_deg`` / ``max_m`` of the start.
    Derivative-free, since the score is piecewise (visibility changes with the pose)."""
    if len(views) < min(gaps) + 1:
        raise ValueError(f"refine_parallax: {len(views)} frames give no pair {min(gaps)} or more apart")
    start = np.asarray(start, np.float64)
    if start.shape != (4, 4) or not np.isfinite(start).all():
        raise ValueError(f"refine_parallax: start must be a finite [4, 4], got {start.shape}")

    def pose(x: np.ndarray) -> np.ndarray:
        return Miscalibration(Rotation.from_rotvec(np.radians(x[:3])).as_matrix(), x[3:] / 100).apply(start)

    step = np.array([step_deg] * 3 + [step_m * 100] * 3)  # deg, cm
    bound = np.array([max_deg] * 3 + [max_m * 100] * 3)
    x = np.zeros(6)
    first = best = parallax_score(views, start, gaps)
    n = 1
    if not np.isfinite(first):
        return ParallaxRefinement(start, start, first, first, n)
    while step[3] >= min_step_m * 100 - 1e-9 and n < max_evaluations:
        trial = None
        for k in range(6):
            for s in (1.0, -1.0):
                c = x.copy()
                c[k] += s * step[k]
                if abs(c[k]) > bound[k] + 1e-9:
                    continue
                v = parallax_score(views, pose(c), gaps)
                n += 1
                if np.isfinite(v) and v > best:
                    best, trial = v, c
        if trial is None:
            step = step / 2
        else:
            x = trial
    return ParallaxRefinement(start, pose(x), first, best, n)
