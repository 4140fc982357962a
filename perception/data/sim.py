"""The synthetic world on disk: the file format ``tools/create_data.py sim`` writes, and :class:`SimReader`.

Layout (``OUT`` is the dataset folder, the ``root`` of :class:`SimReader` and of
``open_reader("sim", root)``)::

    OUT/dataset.json                 format + format_version, the SimConfig, class names, box classes,
                                     driving commands, LiDAR fields, the sequences (name, seed, layout,
                                     frames) and splits {train, val, test: [sequence names]}; split by
                                     sequence, written last (a dataset without it is incomplete)
    OUT/seq_<seed:05d>/calib.json    the rig: ego_from_sensor 4x4 per sensor; per camera its model
                                     (perception.geometry.camera_io.camera_to_dict) and depth kind
                                     ("z" for pinholes, "range" for fisheyes)
    OUT/seq_<seed:05d>/frames.json   per frame: index, token, timestamp (s), ego_pose (world_from_ego
                                     4x4), ego_speed / ego_acceleration / ego_yaw_rate, and the frame's
                                     files relative to the sequence folder; written after the frame
                                     files (a sequence without it is incomplete)
    OUT/seq_<seed:05d>/lidar/<k:04d>.bin          float32 x6 per point (x, y, z, intensity, ring, time),
                                                  LiDAR frame (LIDAR_TOP), time in s relative to the frame
    OUT/seq_<seed:05d>/camera/<CAM>/<k:04d>.jpg   RGB, JPEG quality 92
    OUT/seq_<seed:05d>/depth/<CAM>/<k:04d>.png    uint16 = round(metres x 256), 0 = no depth (KITTI's
                                                  depth convention; values clipped to [1, 65535] where
                                                  there is depth, so < 256 m); z or range per calib.json
    OUT/seq_<seed:05d>/semantic/<CAM>/<k:04d>.png uint8 class ids (dataset.json "class_names")
    OUT/seq_<seed:05d>/bev/<k:04d>.png            uint8 BEV class map [nx, ny] stored as a
                                                  nx-row x ny-column image: row i runs along ego x, column
                                                  j along ego y, on config.bev_grid (BevGrid's indexing)
    OUT/seq_<seed:05d>/labels/<k:04d>.json        boxes [N, 9] (ego frame, mmdet3d LiDAR convention:
                                                  bottom centre x y z, dx dy dz, yaw, vx vy), labels (index
                                                  into box_classes), track_ids, attributes (num_lidar_pts,
                                                  num_camera_pixels, visible), ego_future (poses [8, 3]
                                                  x y heading, timestamps [8] s after the frame),
                                                  driving_command (index into commands), agent_futures
                                                  [N, 8, 3] (x y heading, current ego frame)

PNGs are written with zlib level 1 (fast); every file is written to a temporary name and moved into
place (``os.replace``), so a crash never leaves a half-written file under its final name. Floats in
JSON are written with Python's shortest round-trip repr, so boxes, poses and futures read back exactly
(float32 boxes as float32, the rest as float64).

``tools/create_data.py sim --mmdet3d-infos`` also writes ``OUT/sim_infos_{train,val,test}.pkl`` for
mmdet3d (see that module's docstring).

:class:`SimReader` yields the same :class:`~perception.structures.Sample` as
``perception.sim.scene.SimSequence``: points bit-exact, camera images through JPEG (lossy), depth to
within 1/256 m, semantic and BEV maps exact, boxes / attributes / futures exact. It does not import
the simulator. A missing camera image is recorded in ``Frame.missing`` and counted in
``reader.missing_counts`` (``strict=True`` raises); any other missing, truncated or malformed file
raises :class:`~perception.data.common.DataError` naming it.
"""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from perception.data.common import DataError, Reader, load_image, read_points_bin, require_file
from perception.geometry.camera_io import camera_from_dict, camera_to_dict
from perception.geometry.grid import BevGrid
from perception.geometry.se3 import SE3
from perception.structures import (
    Boxes3D, Calibration, CameraImage, DepthMap, EgoPose, Frame, PointCloud, Sample, Targets, Trajectory,
)

FORMAT = "perception-sim"
FORMAT_VERSION = 1
LIDAR = "LIDAR_TOP"
LIDAR_FIELDS = ("x", "y", "z", "intensity", "ring", "time")
DEPTH_SCALE = 256.0  # KITTI: uint16 PNG of metres x 256, 0 = no depth
JPEG_QUALITY = 92
PNG_COMPRESS_LEVEL = 1
SPLITS = ("train", "val", "test")


def sequence_name(seed: int) -> str:
    return f"seq_{int(seed):05d}"


# -- encoding ------------------------------------------------------------------------------------------
def encode_depth(depth: np.ndarray) -> np.ndarray:
    """``depth [H, W]`` float metres (0 = none) → uint16 ``round(d * 256)``; depth > 0 stays > 0."""
    d = np.asarray(depth, dtype=np.float64)
    q = np.clip(np.rint(d * DEPTH_SCALE), 1, np.iinfo(np.uint16).max)
    return np.where(d > 0, q, 0).astype(np.uint16)


def decode_depth(png: np.ndarray) -> np.ndarray:
    """uint16 ``[H, W]`` → float32 metres."""
    return (np.asarray(png).astype(np.float32) / np.float32(DEPTH_SCALE)).astype(np.float32)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any, compact: bool = False) -> None:
    """JSON (floats as Python's shortest round-trip repr) written atomically; ``compact`` drops whitespace."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    atomic_write_bytes(path, (text + "\n").encode())


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    """``array`` ([H, W, 3] uint8 RGB for JPEG; [H, W] uint8 or uint16 for PNG) → encoded bytes."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        a = np.ascontiguousarray(array)
        if a.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"image_bytes: PNG arrays must be uint8 or uint16, got {a.dtype}")
        Image.fromarray(a).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        raise ValueError(f"image_bytes: fmt 'jpeg' or 'png', got {fmt!r}")
    return buf.getvalue()


def read_json(path: Path, what: str = "json file") -> Any:
    p = require_file(path, what)
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DataError(p, f"malformed JSON: {e.msg}", e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(p, f"cannot read {what}: {e}") from None


def read_png(path: Path, dtype, what: str) -> np.ndarray:
    """A single-channel PNG → ``[H, W]`` of ``dtype`` (uint8 class maps, uint16 depth)."""
    from PIL import Image, UnidentifiedImageError

    p = require_file(path, what)
    try:
        with Image.open(p) as im:
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(p, f"cannot decode {what}: {e}") from None
    if a.ndim != 2:
        raise DataError(p, f"{what}: expected a single-channel image, got shape {a.shape}")
    if np.dtype(dtype) == np.uint8 and a.dtype != np.uint8:
        raise DataError(p, f"{what}: expected an 8-bit image, got {a.dtype}")
    if a.min(initial=0) < 0 or a.max(initial=0) > np.iinfo(dtype).max:
        raise DataError(p, f"{what}: values outside {np.dtype(dtype).name}")
    return a.astype(dtype, copy=False)


# -- writing one sequence ------------------------------------------------------------------------------
def _m(t) -> list:
    return np.asarray(t.matrix if isinstance(t, SE3) else t, dtype=np.float64).tolist()


def calib_to_dict(calib: Calibration, depth_kinds: Mapping[str, str]) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "lidars": [LIDAR],
        "ego_from_sensor": {name: _m(t) for name, t in calib.ego_from_sensor.items()},
        "cameras": {name: {"model": camera_to_dict(m), "depth_kind": depth_kinds[name]} for name, m in calib.cameras.items()},
    }


def labels_to_dict(sample: Sample) -> dict:
    t = sample.targets
    return {
        "token": sample.frame.token,
        "boxes": t.boxes.tensor.tolist(),  # float32 values, exact as JSON floats
        "labels": t.boxes.labels.tolist(),
        "track_ids": (t.boxes.track_ids if t.boxes.track_ids is not None else np.full(len(t.boxes), -1)).tolist(),
        "attributes": {k: np.asarray(v).tolist() for k, v in t.attributes.items()},
        "attribute_dtypes": {k: np.asarray(v).dtype.name for k, v in t.attributes.items()},
        "ego_future": {"poses": t.ego_future.poses.tolist(), "timestamps": t.ego_future.timestamps.tolist()},
        "driving_command": int(t.driving_command),
        "agent_futures": np.asarray(t.agent_futures).tolist(),
    }


def write_sequence(seed: int, config, root: str | Path, progress: Callable[[int], None] | None = None) -> dict:
    """Simulate sequence ``seed`` with ``config`` (a ``SimConfig``) into ``root / seq_<seed:05d>``.

    Returns ``{"name", "seed", "layout", "frames", "points", "boxes"}``. Deterministic: the bytes
    written depend only on ``seed`` and ``config``. ``progress(1)`` is called after every frame.
    """
    import shutil

    from perception.sim.scene import SimSequence

    seq = SimSequence(seed, config)
    name = sequence_name(seed)
    d = Path(root) / name
    if d.exists():
        shutil.rmtree(d)  # a stale sequence of an earlier run (possibly more frames)
    cams = [c.name for c in seq.cameras] if config.render_cameras else []
    for sub in ["lidar", "bev", "labels"] + [f"{kind}/{c}" for kind in ("camera", "depth", "semantic") for c in cams]:
        (d / sub).mkdir(parents=True, exist_ok=True)
    kinds = {c.name: "range" if c.range_depth else "z" for c in seq.cameras}
    atomic_write_json(d / "calib.json", calib_to_dict(seq.calib, kinds))
    frames, points, boxes = [], 0, 0
    for k in range(len(seq)):
        s = seq[k]
        f, t = s.frame, s.targets
        files = {"lidar": f"lidar/{k:04d}.bin", "cameras": {}, "depth": {}, "semantic": {},
                 "bev": f"bev/{k:04d}.png", "labels": f"labels/{k:04d}.json"}
        pc = f.lidar[LIDAR]
        if pc.fields != LIDAR_FIELDS:
            raise ValueError(f"write_sequence: LiDAR fields {pc.fields}, the format stores {LIDAR_FIELDS}")
        atomic_write_bytes(d / files["lidar"], np.ascontiguousarray(pc.points, dtype="<f4").tobytes())
        for c in cams:
            files["cameras"][c] = f"camera/{c}/{k:04d}.jpg"
            files["depth"][c] = f"depth/{c}/{k:04d}.png"
            files["semantic"][c] = f"semantic/{c}/{k:04d}.png"
            atomic_write_bytes(d / files["cameras"][c], image_bytes(f.cameras[c].image, "jpeg"))
            atomic_write_bytes(d / files["depth"][c], image_bytes(encode_depth(t.depth[c].depth), "png"))
            atomic_write_bytes(d / files["semantic"][c], image_bytes(t.semantic[c], "png"))
        atomic_write_bytes(d / files["bev"], image_bytes(t.bev_semantic, "png"))
        atomic_write_json(d / files["labels"], labels_to_dict(s), compact=True)
        frames.append({
            "index": k, "token": f.token, "timestamp": float(f.timestamp),
            "ego_pose": _m(f.ego_pose.world_from_ego),
            **{key: float(f.meta[key]) for key in ("ego_speed", "ego_acceleration", "ego_yaw_rate")},
            "files": files,
        })
        points += len(pc)
        boxes += len(t.boxes)
        if progress is not None:
            progress(1)
    atomic_write_json(d / "frames.json", {
        "format": FORMAT, "format_version": FORMAT_VERSION, "sequence": name, "seed": int(seed),
        "layout": seq.world.layout, "frames": frames,
    })
    return {"name": name, "seed": int(seed), "layout": seq.world.layout, "frames": len(seq), "points": points, "boxes": boxes}


# -- reading -------------------------------------------------------------------------------------------
def read_calib(seq_dir: Path) -> tuple[Calibration, dict[str, str]]:
    """``seq_dir/calib.json`` → ``(Calibration, {camera: depth kind})``."""
    path = Path(seq_dir) / "calib.json"
    d = read_json(path, "calibration")
    try:
        sensors = {name: SE3(np.asarray(m, dtype=np.float64)) for name, m in d["ego_from_sensor"].items()}
        cams = {name: camera_from_dict(c["model"]) for name, c in d["cameras"].items()}
        kinds = {name: str(c["depth_kind"]) for name, c in d["cameras"].items()}
        return Calibration(sensors, cams), kinds
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"bad calibration: {type(e).__name__}: {e}") from None


def read_labels(path: Path, box_classes: tuple[str, ...]) -> dict[str, Any]:
    """A ``labels/<k>.json`` → ``{"boxes": Boxes3D (ego), "attributes", "ego_future": Trajectory,
    "driving_command", "agent_futures" [N, T, 3]}``."""
    d = read_json(path, "labels")
    try:
        tensor = np.asarray(d["boxes"], dtype=np.float32).reshape(-1, 9)
        boxes = Boxes3D(tensor, np.asarray(d["labels"], np.int64), box_classes, "ego",
                        np.asarray(d["track_ids"], np.int64))
        dtypes = d.get("attribute_dtypes", {})
        attrs = {k: np.asarray(v, dtype=dtypes.get(k)).reshape(len(boxes)) for k, v in d["attributes"].items()}
        fut = d["ego_future"]
        ego_future = Trajectory(np.asarray(fut["poses"], np.float64), np.asarray(fut["timestamps"], np.float64))
        agents = np.asarray(d["agent_futures"], np.float64).reshape(len(boxes), len(ego_future), 3)
        return {"boxes": boxes, "attributes": attrs, "ego_future": ego_future,
                "driving_command": int(d["driving_command"]), "agent_futures": agents}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"bad labels: {type(e).__name__}: {e}") from None


class SimReader(Reader):
    """Samples of a dataset written by ``tools/create_data.py sim`` (layout in the module docstring).

    ``split`` is ``"train"``, ``"val"``, ``"test"`` (sequences listed in ``dataset.json``) or ``"all"``;
    ``load_images=False`` skips decoding the JPEGs (``Frame.cameras`` is then empty, the models stay in
    the calibration, missing images are still detected); ``strict=True`` raises on a missing image.
    """

    name = "sim"

    def __init__(self, root: str | Path, split: str = "train", load_images: bool = True, strict: bool = False) -> None:
        self.root = Path(root)
        self.dataset_path = self.root / "dataset.json"
        ds = read_json(self.dataset_path, "dataset description (written last by tools/create_data.py sim)")
        if ds.get("format") != FORMAT or ds.get("format_version") != FORMAT_VERSION:
            raise DataError(self.dataset_path, f"format {ds.get('format')!r} version {ds.get('format_version')!r}; "
                            f"this reader reads {FORMAT!r} version {FORMAT_VERSION}")
        if split not in SPLITS + ("all",):
            raise ValueError(f"SimReader: split must be one of {SPLITS + ('all',)}, got {split!r}")
        try:
            self.dataset = ds
            self.config: dict = ds["config"]
            self.bev_grid = BevGrid(**self.config["bev_grid"])
            self.class_names = tuple(ds["class_names"])
            self.box_classes = tuple(ds["box_classes"])
            self.commands = tuple(ds["commands"])
            all_names = [s["name"] for s in ds["sequences"]]
            self.sequences = list(all_names) if split == "all" else list(ds["splits"][split])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(self.dataset_path, f"bad dataset description: {type(e).__name__}: {e}") from None
        self.split = split
        self.load_images = load_images
        self.strict = strict
        self.missing_counts: Counter[str] = Counter()  # camera name → frames read without its image
        self._frames: dict[str, list[dict]] = {}
        self._meta: dict[str, dict] = {}
        self._calib: dict[str, tuple[Calibration, dict[str, str]]] = {}
        self._index: list[tuple[str, int]] = []
        for name in self.sequences:
            path = self.root / name / "frames.json"
            fj = read_json(path, "frame list (written last for a sequence)")
            try:
                self._frames[name] = list(fj["frames"])
                self._meta[name] = {"seed": int(fj["seed"]), "layout": fj["layout"]}
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(path, f"bad frame list: {type(e).__name__}: {e}") from None
            self._index += [(name, k) for k in range(len(self._frames[name]))]

    def __len__(self) -> int:
        return len(self._index)

    def calib(self, sequence: str) -> tuple[Calibration, dict[str, str]]:
        if sequence not in self._calib:
            self._calib[sequence] = read_calib(self.root / sequence)
        return self._calib[sequence]

    def load(self, index: int) -> Sample:
        name, k = self._index[index]
        seq_dir = self.root / name
        entry = self._frames[name][k]
        calib, kinds = self.calib(name)
        try:
            t = float(entry["timestamp"])
            token = str(entry["token"])
            files = entry["files"]
            pose = SE3(np.asarray(entry["ego_pose"], dtype=np.float64))
            odometry = {key: float(entry[key]) for key in ("ego_speed", "ego_acceleration", "ego_yaw_rate")}
            missing_keys = [key for key in ("lidar", "cameras", "depth", "semantic", "bev", "labels") if key not in files]
            if missing_keys:
                raise KeyError(f"files lack {missing_keys}")
            unknown = sorted((set(files["cameras"]) | set(files["depth"])) - set(calib.cameras))
            if unknown:
                raise ValueError(f"cameras {unknown} are not in calib.json")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(seq_dir / "frames.json", f"frames[{k}]: {type(e).__name__}: {e}") from None

        points = read_points_bin(seq_dir / files["lidar"], len(LIDAR_FIELDS), np.dtype("<f4"))
        images, missing, paths = {}, [], {"lidar": str(seq_dir / files["lidar"])}
        for cam, rel in files["cameras"].items():
            path = seq_dir / rel
            if not path.is_file():
                if self.strict:
                    raise DataError(path, f"image of {cam} not found")
                missing.append(cam)
                self.missing_counts[cam] += 1
                continue
            paths[cam] = str(path)
            if self.load_images:
                model = calib.cameras[cam]
                img = load_image(path)
                if (img.shape[1], img.shape[0]) != (model.width, model.height):
                    raise DataError(path, f"image is {img.shape[1]}x{img.shape[0]}, its camera model {model.width}x{model.height}")
                images[cam] = CameraImage(img, model, t, cam)
        targets = self._targets(seq_dir, files, t, kinds)
        frame = Frame(
            token=token, timestamp=t, calib=calib,
            lidar={LIDAR: PointCloud(points, LIDAR_FIELDS, t, LIDAR)},
            cameras=images, ego_pose=EgoPose(t, pose), missing=tuple(missing), source="sim",
            meta={"sequence": self._meta[name]["seed"], "index": int(entry.get("index", k)),
                  "layout": self._meta[name]["layout"], **odometry, "driving_command": targets.driving_command,
                  "paths": paths, "root": str(self.root)},  # the route's command, an input (as SimSequence's)
        )
        return Sample(frame, targets)

    def _targets(self, seq_dir: Path, files: Mapping[str, Any], t: float, kinds: Mapping[str, str]) -> Targets:
        lab = read_labels(seq_dir / files["labels"], self.box_classes)
        depth, semantic = {}, {}
        for cam, rel in files["depth"].items():
            depth[cam] = DepthMap(decode_depth(read_png(seq_dir / rel, np.uint16, "depth map")), cam, t, kinds[cam])
        for cam, rel in files["semantic"].items():
            semantic[cam] = read_png(seq_dir / rel, np.uint8, "semantic map")
        bev = read_png(seq_dir / files["bev"], np.uint8, "BEV map")
        if bev.shape != self.bev_grid.shape:
            raise DataError(seq_dir / files["bev"], f"BEV map is {bev.shape}, the grid {self.bev_grid.shape}")
        return Targets(
            boxes=lab["boxes"], attributes=lab["attributes"], depth=depth, semantic=semantic,
            ego_future=lab["ego_future"], driving_command=lab["driving_command"], bev_semantic=bev,
            agent_futures=lab["agent_futures"],
            meta={"bev_grid": self.bev_grid, "classes": self.class_names, "commands": self.commands},
        )


__all__ = ["SimReader", "write_sequence", "read_calib", "read_labels", "sequence_name", "encode_depth", "decode_depth"]
