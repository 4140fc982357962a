"""Reader of NAVSIM / OpenScene logs (nuPlan sensor data), one :class:`Sample` per log frame.

Layout (NAVSIM ``docs/install.md``): ``logs_dir/<log_name>.pkl`` and ``sensor_blobs_dir/<log_name>/
{MergedPointCloud/*.pcd, CAM_F0/*.jpg, ...}``. Each log pickle is a list of frame dicts written by
OpenScene's ``DriveEngine/process_data/create_openscene_metadata.py`` and read by NAVSIM's
``navsim/common/dataclasses.py`` (``Scene.from_scene_dict_list``, ``Cameras.from_camera_dict``,
``Lidar.from_paths``) and ``navsim/common/dataloader.py``. The keys used here:

* ``token``, ``timestamp`` (nuPlan microseconds), ``log_name``, ``scene_token``, ``map_location``;
* ``ego2global_translation [3]`` + ``ego2global_rotation`` (quaternion w, x, y, z; what NAVSIM reads),
  else ``ego2global [4, 4]``; ``lidar2ego_translation`` + ``lidar2ego_rotation`` or ``lidar2ego [4, 4]``;
* ``lidar_path`` (relative to ``sensor_blobs_dir``): a nuPlan merged point cloud, binary PCD with
  fields ``x y z intensity ring lidar_info`` (nuPlan's ``PointCloud.parse``); see :func:`read_pcd`;
* ``cams``: ``CAM_F0, CAM_L0, CAM_L1, CAM_L2, CAM_R0, CAM_R1, CAM_R2, CAM_B0`` each with ``data_path``,
  ``sensor2lidar_rotation [3, 3]``, ``sensor2lidar_translation [3]``, ``cam_intrinsic [3, 3]``,
  ``distortion`` (OpenCV ``k1, k2, p1, p2, k3``);
* ``anns``: ``gt_boxes [N, 7]`` = centre ``x, y, z``, ``l, w, h``, heading, in the **ego** (rear-axle)
  frame (the converter subtracts the ego translation, rotates by the inverse ego rotation and
  subtracts the ego yaw); ``gt_names [N]``; ``gt_velocity_3d [N, 3]`` (rotated into the **LiDAR**
  frame by the converter); ``instance_tokens``, ``track_tokens``;
* ``driving_command``: one-hot ``(left, forward, right, unknown)``; ``ego_dynamic_state``
  ``(vx, vy, ax, ay)``; ``roadblock_ids``, ``traffic_lights`` (not read).

Conversions: boxes become ``Boxes3D`` in the ego frame, bottom centre (``z - h/2``), with the
velocity rotated back into the ego frame (``[N, 9]``). Points stay in the LiDAR frame
(``frame_id = "MergedPointCloud"``, ``ego_from_sensor`` from ``lidar2ego``); cameras sit at
``lidar2ego · sensor2lidar``. The driving command becomes its index (0 left … 3 unknown). The
ego-status inputs NAVSIM gives agents (``ego_dynamic_state``, ``driving_command``) are in ``Frame.meta``.

Ego future (``Targets.ego_future``): NAVSIM's ``Scene.get_future_trajectory`` — 8 poses, 0.5 s
apart (4 s), ``(x, y, heading)`` of the future ego poses relative to the current one in SE(2),
heading from the quaternion's yaw. The future frames are found by timestamp in the same log (the
frame closest to ``t + 0.5 k``, within ``future_tolerance_s``), so 2 Hz OpenScene/NAVSIM logs and
10 Hz ones both work. Frames without a full future get ``ego_future=None``; how many is in
``reader.frames_without_future`` (known at construction).

Missing files: a missing log or point cloud raises :class:`DataError` naming it; a camera whose
image is missing is listed in ``Frame.missing`` and counted in ``reader.missing_counts`` (its
calibration is kept, with nuPlan's 1920x1080 image size), unless ``strict=True``, which raises.
"""
from __future__ import annotations

import hashlib
import pickle
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from perception.data.common import DataError, Reader, load_image, parse_floats, require_file
from perception.geometry.cameras import PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import (
    Boxes3D, Calibration, CameraImage, EgoPose, Frame, PointCloud, Sample, Targets, Trajectory,
)

CAMERAS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")
LIDAR = "MergedPointCloud"
CLASSES = ("vehicle", "bicycle", "pedestrian", "traffic_cone", "barrier", "czone_sign", "generic_object")
DRIVING_COMMANDS = ("left", "forward", "right", "unknown")
INTERVAL_S = 0.5  # NAVSIM_INTERVAL_LENGTH
NUM_FUTURE_POSES = 8  # TrajectorySampling(time_horizon=4, interval_length=0.5)
NUPLAN_IMAGE_SIZE = (1920, 1080)  # (width, height) of nuPlan's cameras

_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4",
              ("I", 8): "<i8", ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}


def read_pcd(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """A PCD file (``DATA ascii`` or ``binary``, every ``COUNT`` 1) → ``points [N, C]`` float32 and field names.

    Columns are reordered so that ``x, y, z`` come first. Trailing bytes after the binary points are
    ignored (nuPlan's files carry zero padding); too few bytes raise :class:`DataError`.
    """
    p = require_file(path, "point cloud")
    raw = p.read_bytes()
    header: dict[str, tuple[int, list[str]]] = {}
    pos, line_no = 0, 0
    while "DATA" not in header:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataError(p, "PCD header ends without a DATA line", line_no or None)
        line_no += 1
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if line and not line.startswith("#"):
            key, *vals = line.split()
            header[key.upper()] = (line_no, vals)
    for key in ("FIELDS", "SIZE", "TYPE"):
        if key not in header:
            raise DataError(p, f"PCD header has no {key} line")
    fields = header["FIELDS"][1]
    sizes, types = header["SIZE"][1], header["TYPE"][1]
    counts = header.get("COUNT", (0, ["1"] * len(fields)))[1]
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise DataError(p, "FIELDS/SIZE/TYPE/COUNT have different lengths", header["FIELDS"][0])
    if any(c != "1" for c in counts):
        raise DataError(p, f"only COUNT 1 is supported, got {counts}", header.get("COUNT", (None,))[0])
    if not {"x", "y", "z"} <= set(fields):
        raise DataError(p, f"PCD needs fields x, y, z; has {fields}", header["FIELDS"][0])
    try:
        dtype = np.dtype([(f, _PCD_TYPES[(t.upper(), int(s))]) for f, t, s in zip(fields, types, sizes)])
        if "POINTS" in header:
            n = int(header["POINTS"][1][0])
        else:
            n = int(header["WIDTH"][1][0]) * int(header.get("HEIGHT", (0, ["1"]))[1][0])
    except (KeyError, ValueError, IndexError) as e:
        raise DataError(p, f"bad PCD header: {type(e).__name__}: {e}") from None
    kind = header["DATA"][1][0].lower() if header["DATA"][1] else ""
    if kind == "binary":
        need = dtype.itemsize * n
        if len(raw) - pos < need:
            raise DataError(p, f"truncated PCD: {n} points need {need} bytes of data, file has {len(raw) - pos}")
        rec = np.frombuffer(raw, dtype=dtype, count=n, offset=pos)
        cols = np.stack([rec[f].astype(np.float32) for f in fields], axis=1)
    elif kind == "ascii":
        lines = raw[pos:].decode("ascii", errors="replace").splitlines()
        rows = [parse_floats(p, line_no + i + 1, ln, len(fields)) for i, ln in enumerate(lines) if ln.strip()]
        if len(rows) != n:
            raise DataError(p, f"header says {n} points, found {len(rows)} data lines")
        cols = np.asarray(rows, dtype=np.float32).reshape(n, len(fields))
    else:
        raise DataError(p, f"unsupported PCD DATA {kind!r} (ascii and binary are supported)", header["DATA"][0])
    order = [fields.index(c) for c in ("x", "y", "z")] + [i for i, f in enumerate(fields) if f not in ("x", "y", "z")]
    return np.ascontiguousarray(cols[:, order]), tuple(fields[i] for i in order)


def _pose(fr: Mapping[str, Any], name: str) -> SE3:
    """``<name>_translation`` + ``<name>_rotation`` (quaternion w, x, y, z), else ``<name> [4, 4]``."""
    if f"{name}_translation" in fr and f"{name}_rotation" in fr:
        rot = np.asarray(fr[f"{name}_rotation"], dtype=np.float64)
        if rot.shape == (3, 3):
            return SE3.from_rt(rot, fr[f"{name}_translation"])
        return SE3.from_quaternion(rot, fr[f"{name}_translation"])
    return SE3(np.asarray(fr[name], dtype=np.float64))


def se2(pose: SE3) -> np.ndarray:
    """``(x, y, yaw)`` [3] of a pose (yaw about z, as pyquaternion's ``yaw_pitch_roll[0]``)."""
    r = pose.rotation
    return np.array([pose.translation[0], pose.translation[1], np.arctan2(r[1, 0], r[0, 0])])


def relative_se2(origin: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """``poses [T, 3]`` in the frame of ``origin [3]`` (NAVSIM's ``convert_absolute_to_relative_se2_array``)."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    d = poses[:, :2] - origin[:2]
    out = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], poses[:, 2] - origin[2]], axis=1)
    out[:, 2] = np.arctan2(np.sin(out[:, 2]), np.cos(out[:, 2]))
    return out


def driving_command_index(command: Any) -> int:
    """One-hot ``(left, forward, right, unknown)`` (or an index) → 0..3."""
    a = np.asarray(command).reshape(-1)
    if a.size == 1 and 0 <= int(a[0]) < 4:
        return int(a[0])
    if a.size == 4 and np.isin(a, (0, 1)).all() and a.sum() == 1:
        return int(a.argmax())
    raise ValueError(f"driving_command must be one-hot over {DRIVING_COMMANDS}, got {a.tolist()}")


def track_id(token: str) -> int:
    """A stable int64 id for a nuPlan track token (first 63 bits of its BLAKE2b hash)."""
    return int.from_bytes(hashlib.blake2b(str(token).encode(), digest_size=8).digest(), "little") >> 1


class NavsimReader(Reader):
    """Every frame of the NAVSIM/OpenScene logs in ``logs_dir`` (a folder of ``*.pkl`` or one pkl).

    ``log_names`` / ``tokens`` restrict the frames (as NAVSIM's ``SceneFilter``); ``cameras`` picks
    the cameras to load; ``load_lidar`` / ``load_images`` skip decoding.
    """

    name = "navsim"

    def __init__(
        self,
        logs_dir: str | Path,
        sensor_blobs_dir: str | Path,
        *,
        log_names: Sequence[str] | None = None,
        tokens: Sequence[str] | None = None,
        cameras: Sequence[str] = CAMERAS,
        class_names: Sequence[str] = CLASSES,
        load_lidar: bool = True,
        load_images: bool = True,
        strict: bool = False,
        future_tolerance_s: float = 0.05,
        cache_logs: int = 2,
    ) -> None:
        logs_dir = Path(logs_dir)
        if logs_dir.is_file():
            self.log_paths = [logs_dir]
        elif logs_dir.is_dir():
            self.log_paths = sorted(logs_dir.glob("*.pkl"))
        else:
            raise DataError(logs_dir, "NAVSIM logs folder not found")
        if log_names is not None:
            self.log_paths = [p for p in self.log_paths if p.stem in set(log_names)]
        if not self.log_paths:
            which = f" for log_names {list(log_names)}" if log_names is not None else ""
            raise DataError(logs_dir, f"no NAVSIM log pickles (*.pkl) found{which}")
        self.sensor_blobs_dir = Path(sensor_blobs_dir)
        self.cameras = tuple(cameras)
        self.class_names = tuple(class_names)
        self.load_lidar, self.load_images, self.strict = load_lidar, load_images, strict
        self.future_tolerance_s = future_tolerance_s
        self._cache: OrderedDict[int, list[dict]] = OrderedDict()
        self._cache_size = max(1, cache_logs)
        self.missing_counts: Counter[str] = Counter()  # camera name → frames loaded without its image

        wanted = set(tokens) if tokens is not None else None
        self._index: list[tuple[int, int]] = []  # (log, frame in log)
        self._times: list[np.ndarray] = []  # per log [F] seconds
        self._se2: list[np.ndarray] = []  # per log [F, 3] global (x, y, yaw)
        for li, path in enumerate(self.log_paths):
            frames = self._read_log(li)
            try:
                times = np.array([int(fr["timestamp"]) * 1e-6 for fr in frames], dtype=np.float64)
                poses = np.array([se2(_pose(fr, "ego2global")) for fr in frames]).reshape(-1, 3)
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(path, f"bad frame timestamp / ego pose: {type(e).__name__}: {e}") from None
            if (np.diff(times) <= 0).any():
                bad = int(np.argmax(np.diff(times) <= 0)) + 1
                raise DataError(path, f"frame {bad}: timestamps must increase within a log")
            self._times.append(times)
            self._se2.append(poses)
            self._index += [(li, fi) for fi, fr in enumerate(frames) if wanted is None or fr.get("token") in wanted]
        self.frames_without_future = sum(self._future_indices(li, fi) is None for li, fi in self._index)

    def __len__(self) -> int:
        return len(self._index)

    def _read_log(self, li: int) -> list[dict]:
        if li in self._cache:
            self._cache.move_to_end(li)
            return self._cache[li]
        path = require_file(self.log_paths[li], "NAVSIM log")
        try:
            with open(path, "rb") as f:
                frames = pickle.load(f)
        except Exception as e:
            raise DataError(path, f"cannot unpickle log: {type(e).__name__}: {e}") from None
        if not isinstance(frames, list) or not all(isinstance(fr, Mapping) for fr in frames):
            raise DataError(path, "a NAVSIM log pickle must be a list of frame dicts")
        self._cache[li] = frames
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return frames

    def _future_indices(self, li: int, fi: int) -> np.ndarray | None:
        """Indices ``[8]`` of the frames 0.5 s, 1 s, ... 4 s after frame ``fi``; None if any is missing."""
        times = self._times[li]
        if len(times) < 2:
            return None
        target = times[fi] + INTERVAL_S * np.arange(1, NUM_FUTURE_POSES + 1)
        j = np.clip(np.searchsorted(times, target), 1, len(times) - 1)
        j = np.where(np.abs(times[j - 1] - target) < np.abs(times[j] - target), j - 1, j)
        return None if (np.abs(times[j] - target) > self.future_tolerance_s).any() else j

    def ego_future(self, index: int) -> Trajectory | None:
        """The NAVSIM ego future of sample ``index``: ``poses [8, 3]`` in the current ego frame, or None."""
        li, fi = self._index[index]
        j = self._future_indices(li, fi)
        if j is None:
            return None
        poses = relative_se2(self._se2[li][fi], self._se2[li][j])
        return Trajectory(poses, self._times[li][j] - self._times[li][fi], frame_id="ego")

    def load(self, index: int) -> Sample:
        li, fi = self._index[index]
        log_path = self.log_paths[li]
        fr = self._read_log(li)[fi]
        where = f"frame {fi} ({fr.get('token', '?')})"
        try:
            t = int(fr["timestamp"]) * 1e-6
            world_from_ego = _pose(fr, "ego2global")
            has_l2e = "lidar2ego" in fr or "lidar2ego_translation" in fr
            ego_from_lidar = _pose(fr, "lidar2ego") if has_l2e else SE3.identity()
            cams = fr.get("cams", {})
            lidar_rel = fr["lidar_path"]
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(log_path, f"{where}: {type(e).__name__}: {e}") from None

        lidar = {}
        if self.load_lidar:
            pts, fields = read_pcd(self.sensor_blobs_dir / lidar_rel)
            lidar[LIDAR] = PointCloud(pts, fields, t, LIDAR)
        sensors: dict[str, SE3] = {LIDAR: ego_from_lidar}
        models: dict[str, PinholeCamera] = {}
        images: dict[str, CameraImage] = {}
        missing: list[str] = []
        paths = {"lidar": str(self.sensor_blobs_dir / lidar_rel)}
        for name in self.cameras:
            if name not in cams:
                missing.append(name)
                self.missing_counts[name] += 1
                continue
            c = cams[name]
            try:
                rot = np.asarray(c["sensor2lidar_rotation"], dtype=np.float64)
                lidar_from_cam = (SE3.from_rt(rot, c["sensor2lidar_translation"]) if rot.shape == (3, 3)
                                  else SE3.from_quaternion(rot, c["sensor2lidar_translation"]))
                sensors[name] = ego_from_lidar @ lidar_from_cam
                k, dist = np.asarray(c["cam_intrinsic"], dtype=np.float64), c.get("distortion")
                img_path = self.sensor_blobs_dir / c["data_path"]
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(log_path, f"{where}: cams.{name}: {type(e).__name__}: {e}") from None
            if not img_path.is_file():
                if self.strict:
                    raise DataError(img_path, f"image of {name} not found")
                missing.append(name)
                self.missing_counts[name] += 1
                models[name] = self._camera(k, dist, NUPLAN_IMAGE_SIZE, log_path, where, name)
                continue
            paths[name] = str(img_path)
            if self.load_images:
                image = load_image(img_path)
                models[name] = self._camera(k, dist, (image.shape[1], image.shape[0]), log_path, where, name)
                images[name] = CameraImage(image, models[name], t, name)
            else:
                from PIL import Image

                with Image.open(img_path) as im:
                    models[name] = self._camera(k, dist, im.size, log_path, where, name)

        dynamic = fr.get("ego_dynamic_state")
        try:
            command = driving_command_index(fr["driving_command"]) if "driving_command" in fr else None
        except (ValueError, TypeError) as e:
            raise DataError(log_path, f"{where}: driving_command: {type(e).__name__}: {e}") from None
        frame = Frame(
            token=str(fr.get("token", f"{log_path.stem}:{fi}")),
            timestamp=t,
            calib=Calibration(sensors, models),
            lidar=lidar,
            cameras=images,
            ego_pose=EgoPose(t, world_from_ego),
            missing=tuple(missing),
            source="navsim",
            meta={
                "log": str(log_path), "log_name": fr.get("log_name", log_path.stem), "frame_index": fi,
                "scene_token": fr.get("scene_token"), "map_location": fr.get("map_location"),
                "ego_dynamic_state": None if dynamic is None else np.asarray(dynamic, np.float64),  # vx, vy, ax, ay
                "driving_command": command,  # an input: NAVSIM hands it to every agent
                "paths": paths,
            },
        )
        targets = None
        if "anns" in fr:
            try:
                targets = self._targets(fr["anns"], ego_from_lidar, command, self.ego_future(index))
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(log_path, f"{where}: anns: {type(e).__name__}: {e}") from None
        return Sample(frame, targets)

    @staticmethod
    def _camera(k, dist, size, log_path, where, name) -> PinholeCamera:
        try:
            return PinholeCamera.from_matrix(k, size[0], size[1], dist)
        except ValueError as e:
            raise DataError(log_path, f"{where}: cams.{name}: {e}") from None

    def _targets(self, anns: Mapping[str, Any], ego_from_lidar: SE3, command: int | None,
                 future: Trajectory | None) -> Targets:
        """NAVSIM ``anns`` → bottom-centre ego-frame boxes ``[N, 9]`` with ego-frame velocity."""
        b = np.asarray(anns["gt_boxes"], dtype=np.float64).reshape(-1, 7)
        names = np.asarray(anns["gt_names"], dtype=object).reshape(-1)
        n = len(b)
        vel_lidar = np.asarray(anns.get("gt_velocity_3d", np.zeros((n, 3))), dtype=np.float64).reshape(-1, 3)
        track_tokens = list(anns.get("track_tokens", []))
        if not len(names) == len(vel_lidar) == n or (track_tokens and len(track_tokens) != n):
            raise ValueError(f"gt_boxes ({n}), gt_names ({len(names)}), gt_velocity_3d ({len(vel_lidar)}) and "
                             f"track_tokens ({len(track_tokens)}) must have equal length")
        vel_ok = np.isfinite(vel_lidar).all(axis=1)
        vel_ego = np.nan_to_num(vel_lidar, nan=0.0) @ ego_from_lidar.rotation.T
        tensor = np.concatenate([b[:, :3], b[:, 3:7], vel_ego[:, :2]], axis=1)
        tensor[:, 2] -= b[:, 5] / 2  # centre → bottom centre
        labels = np.array([self.class_names.index(x) if x in self.class_names else -1 for x in names], np.int64)
        attrs: dict[str, np.ndarray] = {"name": names, "velocity_valid": vel_ok}
        if track_tokens:
            attrs["track_token"] = np.asarray(track_tokens, dtype=object)
        if len(anns.get("instance_tokens", [])) == n:
            attrs["instance_token"] = np.asarray(anns["instance_tokens"], dtype=object)
        ids = np.array([track_id(x) for x in track_tokens], np.int64) if track_tokens else None
        return Targets(
            boxes=Boxes3D(tensor.astype(np.float32), labels, self.class_names, frame_id="ego", track_ids=ids),
            attributes=attrs,
            ego_future=future,
            driving_command=command,
        )
