"""KITTI-360 reader (Liao et al., TPAMI 2022; devkit ``kitti360scripts/devkits/commons/loadCalibration.py``).

Layout (the parts read here)::

    ROOT/velodyne/<frame>.bin                 float32 x, y, z, reflectance (Velodyne frame)
    ROOT/image_00/<frame>.png                 rectified left perspective image
    ROOT/image_02|03/<frame>.png              side fisheye images (optional)
    ROOT/calibration/perspective.txt          K/D/R/P(_rect) of cameras 00/01
    ROOT/calibration/calib_cam_to_velo.txt    3x4, unrectified camera 00 → Velodyne
    ROOT/calibration/calib_cam_to_pose.txt    image_0x: 3x4, camera → vehicle pose (GPS/IMU) frame
    ROOT/calibration/image_02|03.yaml         MEI fisheye intrinsics

The ego frame is KITTI-360's vehicle "pose" (GPS/IMU) frame turned to the x-forward, y-left, z-up
convention every reader here uses (the pose frame itself is x-forward, y-right, z-down, as
``calib_cam_to_pose.txt`` shows: camera 00's optical axis maps to +x, its "right" to +y, its "down"
to +z), i.e. rotated 180° about x. ``image_00`` is rectified, so its model is the
distortion-free pinhole of ``P_rect_00`` and it sits at ``cam_to_pose[00] · R_rect_00⁻¹``.
The fisheye rig is always in the calibration; a fisheye whose image folder is absent is listed in
``Frame.missing`` (documented fallback, nothing dropped silently). Without ``timestamps.txt`` the
frame time is ``frame number × 0.1 s`` (the Velodyne's 10 Hz).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from perception.data.common import DataError, Reader, load_image, parse_floats, read_key_values, read_points_bin
from perception.geometry import se3
from perception.geometry.cameras import MEICamera, PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import Calibration, CameraImage, Frame, PointCloud, Sample

LIDAR = "velodyne"
PERSPECTIVE = "image_00"
FISHEYES = ("image_02", "image_03")
FIELDS = ("x", "y", "z", "intensity")
FLU_FROM_POSE = np.diag([1.0, -1.0, -1.0, 1.0])  # KITTI-360 pose frame (x fwd, y right, z down) → x fwd, y left, z up


def _rigid(path: Path, line: int, text: str, name: str) -> np.ndarray:
    try:
        return se3.check_rigid(parse_floats(path, line, text, 12).reshape(3, 4), name)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, str(e), line) from None


def read_calibration(calib_dir: str | Path) -> Calibration:
    """The whole KITTI-360 rig (Velodyne, rectified ``image_00``, fisheyes 02/03) in the pose frame."""
    d = Path(calib_dir)
    persp = read_key_values(d / "perspective.txt")
    for key in ("P_rect_00", "R_rect_00", "S_rect_00"):
        if key not in persp:
            raise DataError(d / "perspective.txt", f"missing {key}")
    p_rect = parse_floats(d / "perspective.txt", *persp["P_rect_00"], 12).reshape(3, 4)
    r_rect = np.eye(4)
    r_rect[:3, :3] = parse_floats(d / "perspective.txt", *persp["R_rect_00"], 9).reshape(3, 3)
    r_rect = se3.check_rigid(r_rect, "R_rect_00")
    w, h = parse_floats(d / "perspective.txt", *persp["S_rect_00"], 2).astype(int)

    cam_to_pose = read_key_values(d / "calib_cam_to_pose.txt")
    poses = {}
    for cam in (PERSPECTIVE, *FISHEYES):
        if cam not in cam_to_pose:
            raise DataError(d / "calib_cam_to_pose.txt", f"missing {cam}")
        poses[cam] = _rigid(d / "calib_cam_to_pose.txt", *cam_to_pose[cam], f"{cam} to pose")

    velo_path = d / "calib_cam_to_velo.txt"
    lines = [ln for ln in velo_path.read_text().splitlines() if ln.strip()] if velo_path.is_file() else []
    if len(lines) != 1:
        raise DataError(velo_path, f"expected one line of 12 numbers, found {len(lines)} lines")
    velo_from_cam00 = _rigid(velo_path, 1, lines[0], "cam_to_velo")

    ego = {
        LIDAR: SE3(FLU_FROM_POSE @ poses[PERSPECTIVE] @ se3.inverse(velo_from_cam00)),
        PERSPECTIVE: SE3(FLU_FROM_POSE @ poses[PERSPECTIVE] @ se3.inverse(r_rect)),
    }
    cameras = {PERSPECTIVE: PinholeCamera.from_matrix(p_rect[:, :3], int(w), int(h))}
    for cam in FISHEYES:
        ego[cam] = SE3(FLU_FROM_POSE @ poses[cam])
        cameras[cam] = MEICamera.from_kitti360_yaml(d / f"{cam}.yaml")
    return Calibration(ego_from_sensor=ego, cameras=cameras)


class Kitti360Reader(Reader):
    """Consecutive sweeps of one KITTI-360 drive with the images present beside them."""

    name = "kitti360"

    def __init__(self, root: str | Path, load_images: bool = True):
        self.root = Path(root)
        velo = self.root / "velodyne"
        self.ids = sorted(p.stem for p in velo.glob("*.bin"))
        if not self.ids:
            raise DataError(velo, "no KITTI-360 sweeps (*.bin) found")
        self.calib = read_calibration(self.root / "calibration")
        self.load_images = load_images

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        fid = self.ids[index]
        t = int(fid) * 0.1
        pts = read_points_bin(self.root / "velodyne" / f"{fid}.bin", 4)
        cameras, missing = {}, []
        for cam in (PERSPECTIVE, *FISHEYES):
            path = self.root / cam / f"{fid}.png"
            if not path.is_file():
                missing.append(cam)
            elif self.load_images:
                cameras[cam] = CameraImage(load_image(path), self.calib.cameras[cam], t, cam)
        frame = Frame(
            token=fid, timestamp=t, calib=self.calib, lidar={LIDAR: PointCloud(pts, FIELDS, t, LIDAR)},
            cameras=cameras, missing=tuple(missing), source="kitti360",
            meta={"velodyne": str(self.root / "velodyne" / f"{fid}.bin")},
        )
        return Sample(frame, None)
