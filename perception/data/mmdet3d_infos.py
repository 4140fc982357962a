"""Reader of mmdetection3d's v2 ("1.x") info pickles for nuScenes, Waymo (KITTI-format) and KITTI.

An info pkl is ``{"metainfo": {..., "categories": {name: label}}, "data_list": [info, ...]}``; each
``info`` holds ``lidar_points`` (``lidar_path``, ``num_pts_feats``, optional ``lidar2ego``),
``images`` (per camera ``img_path``, ``cam2img``, ``lidar2cam``, optional ``lidar2img``), optional
``ego2global``, ``timestamp``, ``lidar_sweeps`` and ``instances`` (``bbox_3d``, ``bbox_label_3d``,
optional ``velocity``, ``bbox``, ``num_lidar_pts``, ...). See mmdet3d's
``tools/dataset_converters/update_infos_to_v2.py`` and ``waymo_converter.py``.

What the pkls contain (checked on the samples in ``../shared/data``):

* **nuScenes** (``lidar2ego`` present): ``bbox_3d`` is ``[x, y, z, l, w, h, yaw]`` in the LiDAR
  frame, bottom centre; ``velocity [2]`` in the LiDAR frame (may be NaN: replaced by 0 and flagged in
  ``attributes["velocity_valid"]``). ``lidar2cam`` goes from the LiDAR at the sweep's time to the
  camera at its exposure time (ego motion included), so it differs from the static
  ``lidar2ego · cam2ego⁻¹`` by up to ~0.4 m; the rig is built from ``lidar2cam`` so that projecting
  the sweep through :class:`Calibration` reproduces mmdet3d's ``lidar2img``.
* **Waymo KITTI-format**: ``bbox_3d`` in the "LiDAR" frame, which is Waymo's vehicle frame
  (points of all five LiDARs are stored there; ``ego2global`` is the vehicle pose), bottom centre.
  ``lidar2cam`` maps it to a KITTI-style camera frame. The converter writes ``img_path`` as ``.jpg``;
  files with the same stem and another image extension are accepted (the sample ships ``.png``).
* **KITTI**: ``bbox_3d`` is a *camera* box ``[x, y, z, l, h, w, rotation_y]`` (bottom centre, in the
  rectified camera-0 frame); it is converted with ``images["CAM2"]["lidar2cam"]`` (= ``R0_rect ·
  Tr_velo_to_cam``, as mmdet3d's ``KittiDataset`` does) by
  :func:`perception.geometry.boxes.camera_box_to_lidar`. ``DontCare`` instances (label -1, extent -1)
  are not boxes: their 2D boxes become ``Targets.ignore_regions_2d``. ``cam2img`` is ``P2`` (4x4), whose
  last column shifts camera 2 from the rectified camera 0; the shift is folded into CAM2's extrinsic.

Frames: without ``lidar2ego`` the ego frame *is* the LiDAR frame (identity extrinsic). With it
(nuScenes) the ego frame is the vehicle body, ``ego_from_sensor[lidar]`` is ``lidar2ego``. Either
way the points stay in the LiDAR frame (``frame_id`` = the LiDAR's name) and so do the boxes
(``Boxes3D.frame_id`` says so; use ``boxes.transform(calib.ego_from_sensor[lidar], "ego")`` for ego).

Files are searched, in order, under ``data_root / prefix`` for the dataset's mmdet3d data prefixes
(nuScenes ``samples/<SENSOR>``; Waymo ``training/velodyne``, ``training/image_<i>``; KITTI
``training/velodyne_reduced``, ``training/velodyne``, ``training/image_2``), then ``data_root`` itself
(the flat layout of the nuScenes sample), then the bare file name there. A missing point cloud raises
:class:`DataError` listing the places tried. A camera whose image is missing is recorded in
``Frame.missing`` and counted in ``reader.missing_counts`` (its extrinsic is kept; its model too when
the info gives the image size), unless ``strict=True``, which raises.
"""
from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from perception.data.common import DataError, Reader, load_image, read_points_bin, require_file
from perception.geometry import se3
from perception.geometry.boxes import camera_box_to_lidar
from perception.geometry.cameras import PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import (
    Boxes3D, Calibration, CameraImage, EgoPose, Frame, PointCloud, Sample, Targets,
)

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
# Per-instance scalars copied into Targets.attributes when every instance has them.
ATTRIBUTE_KEYS = (
    "num_lidar_pts", "num_radar_pts", "bbox_3d_isvalid", "attr_label", "camera_id",
    "difficulty", "truncated", "occluded", "alpha",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the datasets mmdet3d writes infos for."""

    lidar_name: str
    fields: tuple[str, ...]  # point columns for the dataset's usual num_pts_feats
    class_names: tuple[str, ...]  # used when metainfo has no "categories"
    lidar_dirs: tuple[str, ...]
    sweep_dirs: tuple[str, ...] = ()  # searched before lidar_dirs for lidar_sweeps
    camera_dirs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # "*" matches any camera
    boxes_in_camera: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "nuscenes": DatasetSpec(
        "LIDAR_TOP", ("x", "y", "z", "intensity", "ring"),
        ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
         "pedestrian", "traffic_cone", "barrier"),
        ("samples/LIDAR_TOP",), ("sweeps/LIDAR_TOP",), {"*": ("samples/{camera}",)},
    ),
    "waymo": DatasetSpec(
        "LIDAR_TOP", ("x", "y", "z", "intensity", "elongation", "timestamp"),
        ("Car", "Pedestrian", "Cyclist"),
        ("training/velodyne",), (),
        {cam: (f"training/image_{i}",) for i, cam in enumerate(
            ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_SIDE_LEFT", "CAM_SIDE_RIGHT"))},
    ),
    "kitti": DatasetSpec(
        "velodyne", ("x", "y", "z", "intensity"),
        ("Pedestrian", "Cyclist", "Car", "Van", "Truck", "Person_sitting", "Tram", "Misc"),
        ("training/velodyne_reduced", "training/velodyne"), (), {"CAM2": ("training/image_2",)},
        boxes_in_camera=True,
    ),
}


def to_seconds(t: Any) -> float:
    """Info timestamps are seconds (nuScenes) or microseconds (Waymo): values above 1e11 are µs."""
    t = float(t)
    return t * 1e-6 if abs(t) > 1e11 else t


def class_names_from_metainfo(metainfo: Mapping[str, Any]) -> tuple[str, ...] | None:
    """``metainfo["categories"] {name: label}`` → names ordered by label (labels < 0 dropped)."""
    cats = metainfo.get("categories") or metainfo.get("classes")
    if not cats:
        return None
    if not isinstance(cats, Mapping):
        return tuple(cats)
    ordered = sorted((int(v), k) for k, v in cats.items() if int(v) >= 0)
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise ValueError(f"metainfo categories are not labelled 0..K-1: {dict(cats)}")
    return tuple(k for _, k in ordered)


def camera_from_lidar(cam: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One ``images[cam]`` entry → ``(cam_from_lidar [4, 4], K [3, 3])``.

    ``cam2img`` may be ``[3, 3]``, ``[3, 4]`` or ``[4, 4]``; a non-zero 4th column (KITTI's ``P2 = K
    [I | t]``) moves the camera by ``t = K⁻¹ p₄``. Without ``lidar2cam``, ``lidar2img`` is divided by
    ``cam2img``. Raises ``KeyError``/``ValueError`` (callers add the file).
    """
    p = np.asarray(cam["cam2img"], dtype=np.float64)
    if p.shape not in ((3, 3), (3, 4), (4, 4)):
        raise ValueError(f"cam2img: expected 3x3, 3x4 or 4x4, got shape {p.shape}")
    k = p[:3, :3]
    view = np.eye(4)
    view[: p.shape[0], : p.shape[1]] = p
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(k, view[:3, 3])
    if "lidar2cam" in cam:
        l2c = np.asarray(cam["lidar2cam"], dtype=np.float64)
    else:
        l2i = np.eye(4)
        m = np.asarray(cam["lidar2img"], dtype=np.float64)
        l2i[: m.shape[0], : m.shape[1]] = m
        l2c = np.linalg.solve(view, l2i)  # lidar2img = view · lidar2cam
    return shift @ se3.check_rigid(l2c, "lidar2cam"), k


class Mmdet3dInfoReader(Reader):
    """Samples of an mmdet3d v2 info pkl.

    ``dataset`` picks the conventions (:data:`DATASETS`); ``data_root`` defaults to the pkl's folder;
    ``data_prefix`` ({"pts" | "sweeps" | camera name: folder under data_root}) overrides the searched
    folders; ``fields`` names the point columns when ``num_pts_feats`` is not the dataset's usual;
    ``max_sweeps`` past sweeps from ``lidar_sweeps`` are loaded into ``Frame.sweeps`` (newest first,
    moved into the current LiDAR frame through the sweeps' ``ego2global``).
    """

    name = "mmdet3d_infos"

    def __init__(
        self,
        info_pkl: str | Path,
        data_root: str | Path | None = None,
        dataset: str = "nuscenes",
        *,
        class_names: Sequence[str] | None = None,
        data_prefix: Mapping[str, str] | None = None,
        fields: Sequence[str] | None = None,
        load_images: bool = True,
        strict: bool = False,
        max_sweeps: int = 0,
    ) -> None:
        if dataset not in DATASETS:
            raise ValueError(f"Mmdet3dInfoReader: dataset must be one of {tuple(DATASETS)}, got {dataset!r}")
        self.spec = DATASETS[dataset]
        self.dataset = dataset
        self.info_path = require_file(info_pkl, "info pkl")
        self.data_root = Path(data_root) if data_root is not None else self.info_path.parent
        try:
            with open(self.info_path, "rb") as f:
                infos = pickle.load(f)
        except Exception as e:  # a truncated or foreign pickle
            raise DataError(self.info_path, f"cannot unpickle info file: {type(e).__name__}: {e}") from None
        if not isinstance(infos, Mapping) or not isinstance(infos.get("data_list"), list):
            raise DataError(self.info_path, "not an mmdet3d v2 info file: expected a dict with a 'data_list' list "
                            "(v1 infos are converted by mmdet3d's update_infos_to_v2.py)")
        self.metainfo: Mapping[str, Any] = infos.get("metainfo", {})
        self.infos: list[dict] = infos["data_list"]
        try:
            self.class_names = tuple(class_names or class_names_from_metainfo(self.metainfo) or self.spec.class_names)
        except ValueError as e:
            raise DataError(self.info_path, str(e)) from None
        self.data_prefix = dict(data_prefix or {})
        self.fields = tuple(fields) if fields is not None else None
        self.load_images = load_images
        self.strict = strict
        self.max_sweeps = max_sweeps
        self.missing_counts: Counter[str] = Counter()  # camera name → frames loaded without its image

    def __len__(self) -> int:
        return len(self.infos)

    # -- files -------------------------------------------------------------------------------------
    def _dirs(self, key: str) -> tuple[str, ...]:
        if key in self.data_prefix:
            return (self.data_prefix[key],)
        if key == "pts":
            return self.spec.lidar_dirs
        if key == "sweeps":
            return self.spec.sweep_dirs + self._dirs("pts")
        dirs = self.spec.camera_dirs.get(key) or self.spec.camera_dirs.get("*", ())
        return tuple(d.format(camera=key) for d in dirs)

    def _find(self, rel: str, key: str, suffixes: Sequence[str] = ()) -> tuple[Path | None, list[Path]]:
        """The first existing file among the candidates for ``rel`` (see the module docstring)."""
        r = Path(rel)
        cands = [r] if r.is_absolute() else []
        cands += [self.data_root / d / r for d in self._dirs(key)] + [self.data_root / r, self.data_root / r.name]
        cands = list(dict.fromkeys(cands))
        for c in cands:
            if c.is_file():
                return c, cands
        for c in cands:
            for s in suffixes:
                if c.with_suffix(s).is_file():
                    return c.with_suffix(s), cands
        return None, cands

    def _require(self, rel: str, key: str, what: str) -> Path:
        path, cands = self._find(rel, key)
        if path is None:
            raise DataError(cands[0], f"{what} not found; tried: {', '.join(map(str, cands))}")
        return path

    def _err(self, where: str, message: str) -> DataError:
        return DataError(self.info_path, f"{where}: {message}")

    # -- loading -----------------------------------------------------------------------------------
    def _point_fields(self, num: int) -> tuple[str, ...]:
        if self.fields is not None and len(self.fields) == num:
            return self.fields
        if len(self.spec.fields) == num:
            return self.spec.fields
        base = ("x", "y", "z", "intensity")[:num]
        return base + tuple(f"f{i}" for i in range(len(base), num))

    def load(self, index: int) -> Sample:
        info = self.infos[index]
        where = f"data_list[{index}]"
        lidar = self.spec.lidar_name
        try:
            lp = info["lidar_points"]
            num = int(lp.get("num_pts_feats", len(self.spec.fields)))
            lidar_rel = lp["lidar_path"]
            ego_from_lidar = SE3(lp["lidar2ego"]) if "lidar2ego" in lp else SE3.identity()
            ego_pose_m = info.get("ego2global")
            ego_pose = SE3(ego_pose_m) if ego_pose_m is not None else None
        except (KeyError, ValueError, TypeError) as e:
            raise self._err(where, f"bad lidar_points / pose entry: {type(e).__name__}: {e}") from None
        t = to_seconds(info["timestamp"]) if "timestamp" in info else index * 0.1
        lidar_path = self._require(lidar_rel, "pts", "point cloud")
        fields = self._point_fields(num)
        points = PointCloud(read_points_bin(lidar_path, num), fields, t, lidar)
        sweeps = self._sweeps(info, where, num, fields, ego_from_lidar, ego_pose)

        sensors: dict[str, SE3] = {lidar: ego_from_lidar}
        models: dict[str, PinholeCamera] = {}
        images: dict[str, CameraImage] = {}
        missing: list[str] = []
        paths = {"lidar": str(lidar_path)}
        for cam, ci in info.get("images", {}).items():
            if not isinstance(ci, Mapping) or not ci.get("img_path"):
                continue  # KITTI lists CAM0/1/3 projections (and R0_rect) without images
            try:
                cam_from_lidar, k = camera_from_lidar(ci)
                sensors[cam] = ego_from_lidar @ SE3(se3.inverse(cam_from_lidar))
            except (KeyError, ValueError, np.linalg.LinAlgError) as e:
                raise self._err(f"{where}.images.{cam}", f"{type(e).__name__}: {e}") from None
            size = (int(ci["width"]), int(ci["height"])) if "width" in ci and "height" in ci else None
            path, cands = self._find(ci["img_path"], cam, IMAGE_SUFFIXES)
            if path is None:
                if self.strict:
                    raise DataError(cands[0], f"image of {cam} not found; tried: {', '.join(map(str, cands))}")
                missing.append(cam)
                self.missing_counts[cam] += 1
                if size is not None:
                    models[cam] = PinholeCamera.from_matrix(k, *size)
                continue
            paths[cam] = str(path)
            image = load_image(path) if self.load_images else None
            actual = (image.shape[1], image.shape[0]) if image is not None else _image_size(path)
            if size is not None and actual != size:
                raise DataError(path, f"image is {actual[0]}x{actual[1]} but the info says {size[0]}x{size[1]}")
            models[cam] = PinholeCamera.from_matrix(k, *actual)
            if image is not None:
                t_cam = to_seconds(ci["timestamp"]) if "timestamp" in ci else t
                images[cam] = CameraImage(image, models[cam], t_cam, cam)

        frame = Frame(
            token=str(info.get("token", info.get("sample_idx", index))),
            timestamp=t,
            calib=Calibration(sensors, models),
            lidar={lidar: points},
            cameras=images,
            ego_pose=EgoPose(t, ego_pose) if ego_pose is not None else None,
            sweeps=sweeps,
            missing=tuple(missing),
            source=f"mmdet3d_infos:{self.dataset}",
            meta={"info_pkl": str(self.info_path), "index": index, "paths": paths},
        )
        targets = self._targets(info, where, frame.calib) if "instances" in info else None
        return Sample(frame, targets)

    def _sweeps(self, info, where, num, fields, ego_from_lidar: SE3, ego_pose: SE3 | None) -> tuple[PointCloud, ...]:
        """Up to ``max_sweeps`` past sweeps ``[N_i, C]``, newest first, in the current LiDAR frame."""
        out = []
        for i, sw in enumerate(info.get("lidar_sweeps", [])[: self.max_sweeps]):
            try:
                slp = sw["lidar_points"]
                if "ego2global" in sw and ego_pose is not None:
                    sw_l2e = SE3(slp["lidar2ego"]) if "lidar2ego" in slp else ego_from_lidar
                    cur_from_sweep = (ego_pose @ ego_from_lidar).inverse() @ SE3(sw["ego2global"]) @ sw_l2e
                else:  # lidar2sensor: current LiDAR → sweep LiDAR (mmdet3d's nuScenes v2 infos)
                    cur_from_sweep = SE3(slp["lidar2sensor"]).inverse()
                rel, t = slp["lidar_path"], to_seconds(sw["timestamp"])
            except (KeyError, ValueError, TypeError) as e:
                raise self._err(f"{where}.lidar_sweeps[{i}]", f"{type(e).__name__}: {e}") from None
            path = self._require(rel, "sweeps", "sweep point cloud")
            pts = read_points_bin(path, num)
            pts[:, :3] = cur_from_sweep.apply(pts[:, :3].astype(np.float64)).astype(np.float32)
            out.append(PointCloud(pts, fields, t, self.spec.lidar_name))
        return tuple(out)

    def _targets(self, info, where, calib: Calibration) -> Targets:
        """Ground truth with boxes in the ego frame (moved from the LiDAR frame when the two differ)."""
        boxes, labels, rows, ignore = [], [], [], []
        for j, inst in enumerate(info["instances"]):
            try:
                b = np.asarray(inst["bbox_3d"], dtype=np.float64)
                label = int(inst["bbox_label_3d"])
            except (KeyError, ValueError, TypeError) as e:
                raise self._err(f"{where}.instances[{j}]", f"{type(e).__name__}: {e}") from None
            if b.shape != (7,):
                raise self._err(f"{where}.instances[{j}].bbox_3d", f"expected 7 numbers, got shape {b.shape}")
            if (b[3:6] < 0).any():  # KITTI DontCare: a 2D region without a 3D box
                if label >= 0:
                    raise self._err(f"{where}.instances[{j}]", f"negative box size {b[3:6]} for label {label}")
                if "bbox" in inst:
                    ignore.append(inst["bbox"])
                continue
            if label >= len(self.class_names):
                raise self._err(f"{where}.instances[{j}]", f"label {label} outside classes {self.class_names}")
            boxes.append(b)
            labels.append(label)
            rows.append(inst)
        tensor = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
        if self.spec.boxes_in_camera and len(tensor):
            try:
                lidar2cam = se3.check_rigid(info["images"]["CAM2"]["lidar2cam"], "images.CAM2.lidar2cam")
            except (KeyError, ValueError) as e:
                raise self._err(where, f"camera-frame boxes need images.CAM2.lidar2cam: {e}") from None
            # camera box [x, y, z, l, h, w, ry] → LiDAR [x, y, z, l, w, h, yaw]
            tensor = camera_box_to_lidar(tensor[:, :3], tensor[:, [4, 5, 3]], tensor[:, 6], se3.inverse(lidar2cam))
        attrs: dict[str, np.ndarray] = {
            k: np.asarray([r[k] for r in rows]) for k in ATTRIBUTE_KEYS if rows and all(k in r for r in rows)
        }
        if rows and all(np.size(r.get("velocity", -1)) == 2 for r in rows):
            vel = np.asarray([r["velocity"] for r in rows], dtype=np.float64)
            attrs["velocity_valid"] = np.isfinite(vel).all(axis=1)
            tensor = np.concatenate([tensor, np.nan_to_num(vel, nan=0.0)], axis=1)
        boxes_2d = None
        if self.spec.boxes_in_camera and rows and all("bbox" in r for r in rows):
            boxes_2d = np.asarray([r["bbox"] for r in rows], dtype=np.float32)
        boxes = Boxes3D(tensor.astype(np.float32), np.asarray(labels, dtype=np.int64), self.class_names,
                        frame_id=self.spec.lidar_name)
        ego_from_lidar = calib.ego_from_sensor[self.spec.lidar_name]
        boxes = Boxes3D(boxes.tensor, boxes.labels, self.class_names, "ego") if ego_from_lidar == SE3.identity() \
            else boxes.transform(ego_from_lidar, "ego")
        return Targets(
            boxes=boxes,
            boxes_2d=boxes_2d,
            boxes_2d_camera="CAM2" if boxes_2d is not None else None,
            attributes=attrs,
            ignore_regions_2d=np.asarray(ignore, dtype=np.float32).reshape(-1, 4) if ignore else None,
        )


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(path, f"cannot read image header: {e}") from None
