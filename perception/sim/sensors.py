"""The simulated rig: LiDAR beam patterns and camera rigs (pinhole and fisheye), mounted on the ego.

Mount positions are in the ego frame (rear axle on the ground, x forward, y left, z up); cameras
use OpenCV axes. Camera models are the foundation's (:mod:`perception.geometry.cameras`), so the
images are rendered through exactly the projection the rest of the pipeline uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from perception.geometry.camera_base import CameraModel
from perception.geometry.cameras import KannalaBrandtCamera, MEICamera, PinholeCamera
from perception.geometry.se3 import SE3

# OpenCV camera axes (x right, y down, z forward) expressed in a body frame looking along +x.
_BODY_FROM_CV = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_mount(x: float, y: float, z: float, yaw_deg: float, pitch_deg: float = 0.0) -> SE3:
    """``ego_from_camera`` for a camera at ``(x, y, z)`` looking at ``yaw`` (left +) and ``pitch`` (down +)."""
    r = Rotation.from_euler("zy", [yaw_deg, pitch_deg], degrees=True).as_matrix() @ _BODY_FROM_CV
    return SE3.from_rt(r, [x, y, z])


@dataclass(frozen=True)
class BeamPattern:
    """A spinning LiDAR: ``elevations_deg [B]`` beams, ``azimuth_steps`` firings per turn at ``rate_hz``."""

    name: str
    elevations_deg: np.ndarray
    azimuth_steps: int
    rate_hz: float = 10.0
    max_range: float = 120.0
    min_range: float = 1.0
    range_noise: float = 0.01  # m, 1 sigma
    drop_prob: float = 0.02  # random ray drop

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


def hdl64() -> BeamPattern:
    """Velodyne HDL-64E-like: +2° … -24.9°, 1/3° spacing in the upper block, 1/2° in the lower (KITTI)."""
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    return BeamPattern("hdl64", np.concatenate([upper, lower]), azimuth_steps=2048)


def waymo_top() -> BeamPattern:
    """Waymo top-LiDAR-like: 64 beams, +2.4° … -17.6°, denser near the horizon, 75 m range."""
    t = np.linspace(0.0, 1.0, 64)
    elev = 2.4 - 20.0 * t ** 1.6
    return BeamPattern("waymo_top", elev, azimuth_steps=2650, max_range=75.0)


LIDAR_MOUNT = SE3.from_rt(np.eye(3), [1.3, 0.0, 1.85])  # roof centre, above the front axle line


@dataclass(frozen=True)
class SimCamera:
    name: str
    model: CameraModel
    ego_from_camera: SE3
    range_depth: bool = False  # fisheyes store range along the ray, pinholes z


def navsim_front_rig(width: int = 640, height: int = 360, hfov_deg: float = 70.0) -> list[SimCamera]:
    """NAVSIM-like front-left / front / front-right pinholes (CAM_L0, CAM_F0, CAM_R0)."""
    f = (width / 2) / np.tan(np.radians(hfov_deg / 2))
    model = PinholeCamera(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
    return [SimCamera(n, model, camera_mount(1.6, 0.0, 1.6, yaw, 2.0))
            for n, yaw in (("CAM_L0", 55.0), ("CAM_F0", 0.0), ("CAM_R0", -55.0))]


def nuscenes_rig(width: int = 640, height: int = 360) -> list[SimCamera]:
    """nuScenes-like six pinholes around the car (70° front/side, 110° back)."""
    out = []
    for name, yaw, hfov, x in (("CAM_FRONT", 0, 70, 1.7), ("CAM_FRONT_LEFT", 55, 70, 1.5), ("CAM_FRONT_RIGHT", -55, 70, 1.5),
                               ("CAM_BACK", 180, 110, -0.5), ("CAM_BACK_LEFT", 110, 70, 1.0), ("CAM_BACK_RIGHT", -110, 70, 1.0)):
        f = (width / 2) / np.tan(np.radians(hfov / 2))
        model = PinholeCamera(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
        out.append(SimCamera(name, model, camera_mount(x, 0.0, 1.55, yaw)))
    return out


def fisheye_rig(size: int = 640) -> list[SimCamera]:
    """Four 190° surround fisheyes: front/rear Kannala-Brandt, left/right MEI (KITTI-360-like, scaled)."""
    theta_max = np.radians(95.0)
    f_kb = (size / 2 - 2) / theta_max  # equidistant-ish: the 190° circle fills the image
    kb = KannalaBrandtCamera(size, size, f_kb, f_kb, (size - 1) / 2, (size - 1) / 2, 0.02, -0.005, 0.0, 0.0)
    s = size / 1400.0  # KITTI-360 image_02 is 1400 x 1400
    mei = MEICamera(size, size, xi=2.2134, k1=0.0168, k2=1.6549, p1=0.0, p2=0.0,
                    gamma1=1336.3 * s, gamma2=1335.8 * s, u0=(size - 1) / 2, v0=(size - 1) / 2)
    return [
        SimCamera("FISHEYE_FRONT", kb, camera_mount(3.6, 0.0, 0.7, 0.0, 20.0), True),
        SimCamera("FISHEYE_LEFT", mei, camera_mount(2.0, 0.95, 1.0, 90.0, 25.0), True),
        SimCamera("FISHEYE_REAR", kb, camera_mount(-0.9, 0.0, 0.9, 180.0, 20.0), True),
        SimCamera("FISHEYE_RIGHT", mei, camera_mount(2.0, -0.95, 1.0, -90.0, 25.0), True),
    ]


def jittered(camera: SimCamera, rng: np.random.Generator, max_deg: float, max_m: float) -> SimCamera:
    """``camera`` mounted off its nominal pose: rotated about its own centre by angles drawn per axis in
    ``+-max_deg`` and shifted by up to ``+-max_m`` per axis (camera axes). A rig whose mounts vary like this leaves
    nothing for a calibration network to memorise: the LiDAR's scan pattern no longer gives the extrinsic away."""
    if max_deg < 0 or max_m < 0:
        raise ValueError(f"jittered: max_deg and max_m must be >= 0, got {max_deg}, {max_m}")
    r = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()
    delta = SE3.from_rt(r, rng.uniform(-max_m, max_m, 3))
    return SimCamera(camera.name, camera.model, camera.ego_from_camera @ delta, camera.range_depth)


RIGS = {"navsim": navsim_front_rig, "nuscenes": nuscenes_rig, "fisheye": fisheye_rig}
