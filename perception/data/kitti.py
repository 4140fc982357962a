"""KITTI 3D object benchmark reader (Geiger et al., CVPR 2012; devkit ``readme.txt``).

Layout: ``ROOT/training/{velodyne/*.bin, image_2/*.png, calib/*.txt, label_2/*.txt}`` and
``ROOT/ImageSets/{train,val,test}.txt``.

Frames: the ego frame is the Velodyne frame (as in mmdet3d), so ``ego_from_sensor["velodyne"]`` is
the identity and the left colour camera ``"CAM2"`` sits at ``(T(t2) · R0_rect · Tr_velo_to_cam)⁻¹``,
where ``P2 = K2 [I | t2]``. Labels (camera frame, bottom centre, ``rotation_y``) become LiDAR boxes
through :func:`perception.geometry.boxes.camera_box_to_lidar`.

Documented fallbacks:
- ``DontCare`` labels are not boxes (they have no 3D extent); they are kept as
  ``Targets.ignore_regions_2d`` so the count is never lost.
- Other KITTI types outside ``CLASSES`` (Van, Truck, Tram, ...) keep their boxes with label -1 and
  their type in ``Targets.attributes["name"]``.
- KITTI object frames carry no time; ``timestamp`` is the frame's position in the split × 0.1 s.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception.data.common import (
    DataError, Reader, load_image, parse_floats, read_key_values, read_points_bin, require_file,
)
from perception.geometry import se3
from perception.geometry.boxes import camera_box_to_lidar
from perception.geometry.cameras import PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import (
    Boxes3D, Calibration, CameraImage, Frame, PointCloud, Sample, Targets,
)

CLASSES = ("Pedestrian", "Cyclist", "Car")  # mmdet3d's KITTI order
LIDAR = "velodyne"
CAMERA = "CAM2"
FIELDS = ("x", "y", "z", "intensity")


@dataclass(frozen=True)
class KittiCalib:
    """The matrices of one ``calib/*.txt`` (float64)."""

    P2: np.ndarray  # [3, 4]
    R0_rect: np.ndarray  # [4, 4]
    velo_to_cam: np.ndarray  # [4, 4] Velodyne → (unrectified) camera 0

    @property
    def rect_from_velo(self) -> np.ndarray:  # [4, 4]
        return self.R0_rect @ self.velo_to_cam

    @property
    def cam2_from_velo(self) -> np.ndarray:  # [4, 4]
        k = self.P2[:, :3]
        shift = np.eye(4)
        shift[:3, 3] = np.linalg.solve(k, self.P2[:, 3])
        return shift @ self.rect_from_velo

    def camera(self, width: int, height: int) -> PinholeCamera:
        return PinholeCamera.from_matrix(self.P2[:, :3], width, height)


def read_calib(path: str | Path) -> KittiCalib:
    """Parse a KITTI object calibration file; errors name the file and line."""
    kv = read_key_values(path)
    mats = {}
    for key, shape in (("P2", (3, 4)), ("R0_rect", (3, 3)), ("Tr_velo_to_cam", (3, 4))):
        if key not in kv:
            raise DataError(path, f"missing {key} (keys: {', '.join(kv)})")
        line, text = kv[key]
        mats[key] = parse_floats(path, line, text, shape[0] * shape[1]).reshape(shape)
        if key != "P2":
            try:
                m = np.eye(4)
                m[: shape[0], : shape[1]] = mats[key]
                mats[key] = se3.check_rigid(m, key)
            except ValueError as e:
                raise DataError(path, str(e), line) from None
    return KittiCalib(mats["P2"], mats["R0_rect"], mats["Tr_velo_to_cam"])


def read_labels(path: str | Path) -> list[tuple[int, list[str]]]:
    """``label_2`` lines → ``[(line number, fields)]``; malformed lines raise DataError."""
    p = require_file(path, "label file")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (15, 16):
            raise DataError(p, f"expected 15 (or 16 with score) fields, got {len(parts)}", i)
        parse_floats(p, i, " ".join(parts[1:]))
        rows.append((i, parts))
    return rows


def kitti_difficulty(height_px: np.ndarray, truncated: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """KITTI's easy/moderate/hard = 0/1/2 (-1: none), from 2D height, truncation and occlusion."""
    out = np.full(len(height_px), -1, dtype=np.int64)
    for level, (min_h, max_occ, max_trunc) in reversed(list(enumerate([(40, 0, 0.15), (25, 1, 0.3), (25, 2, 0.5)]))):
        out[(height_px >= min_h) & (occluded <= max_occ) & (truncated <= max_trunc)] = level
    return out


def labels_to_targets(path: str | Path, calib: KittiCalib) -> Targets:
    """One ``label_2`` file → :class:`Targets` with LiDAR-frame boxes and KITTI attributes."""
    rows = read_labels(path)
    objs = [r for _, r in rows if r[0] != "DontCare"]
    dontcare = np.array([[float(x) for x in r[4:8]] for _, r in rows if r[0] == "DontCare"], np.float32).reshape(-1, 4)
    vals = np.array([[float(x) for x in r[1:15]] for r in objs], dtype=np.float64).reshape(-1, 14)
    names = np.array([r[0] for r in objs], dtype=object)
    lidar_from_rect = se3.inverse(calib.rect_from_velo)
    boxes = camera_box_to_lidar(vals[:, 10:13], vals[:, 7:10], vals[:, 13], lidar_from_rect)
    labels = np.array([CLASSES.index(n) if n in CLASSES else -1 for n in names], dtype=np.int64)
    box2d = vals[:, 3:7]
    attrs = {
        "name": names,
        "truncated": vals[:, 0],
        "occluded": vals[:, 1].astype(np.int64),
        "alpha": vals[:, 2],
        "difficulty": kitti_difficulty(box2d[:, 3] - box2d[:, 1], vals[:, 0], vals[:, 1]),
    }
    return Targets(
        boxes=Boxes3D(boxes, labels, CLASSES, frame_id="ego"),
        boxes_2d=box2d,
        boxes_2d_camera=CAMERA,
        attributes=attrs,
        ignore_regions_2d=dontcare,
    )


class KittiReader(Reader):
    """KITTI object frames of one split (``ImageSets/<split>.txt``; all files in ``training/`` if absent)."""

    name = "kitti"

    def __init__(self, root: str | Path, split: str = "train", subset: str = "training", load_images: bool = True):
        self.root = Path(root)
        self.dir = self.root / subset
        if not self.dir.is_dir():
            raise DataError(self.dir, f"KITTI {subset} folder not found under root {self.root}")
        split_file = self.root / "ImageSets" / f"{split}.txt"
        if split_file.is_file():
            self.ids = [s.strip() for s in split_file.read_text().split() if s.strip()]
        else:
            self.ids = sorted(p.stem for p in (self.dir / "velodyne").glob("*.bin"))
        if not self.ids:
            raise DataError(split_file if split_file.is_file() else self.dir / "velodyne", "no KITTI frames found")
        self.load_images = load_images

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        fid = self.ids[index]
        calib = read_calib(self.dir / "calib" / f"{fid}.txt")
        pts = read_points_bin(self.dir / "velodyne" / f"{fid}.bin", 4)
        t = index * 0.1
        img_path = self.dir / "image_2" / f"{fid}.png"
        cameras, missing = {}, []
        if self.load_images:
            image = load_image(img_path)
            model = calib.camera(image.shape[1], image.shape[0])
            cameras[CAMERA] = CameraImage(image, model, t, CAMERA)
        else:
            from PIL import Image

            with Image.open(require_file(img_path, "image")) as im:
                model = calib.camera(*im.size)
        rig = Calibration(
            ego_from_sensor={LIDAR: SE3.identity(), CAMERA: SE3(se3.inverse(calib.cam2_from_velo))},
            cameras={CAMERA: model},
        )
        frame = Frame(
            token=fid, timestamp=t, calib=rig, lidar={LIDAR: PointCloud(pts, FIELDS, t, LIDAR)},
            cameras=cameras, missing=tuple(missing), source="kitti",
            meta={"velodyne": str(self.dir / "velodyne" / f"{fid}.bin"), "image": str(img_path)},
        )
        label = self.dir / "label_2" / f"{fid}.txt"
        targets = labels_to_targets(label, calib) if label.is_file() else None
        return Sample(frame, targets)
