"""Write frames, detections and ground truth to an MCAP file that Foxglove Studio opens as is.

Messages are JSON-encoded Foxglove schemas (``jsonschema`` schema encoding, ``json`` message
encoding), so only the ``mcap`` package is needed (no protobuf). Per frame, at log time = the
frame's timestamp in nanoseconds:

=================== ========================== =========================================================
topic               schema                     content
=================== ========================== =========================================================
``/lidar``          ``foxglove.PointCloud``    ego-frame points, packed float32 ``x, y, z, intensity``
``/detections``     ``foxglove.SceneUpdate``   predicted boxes (cubes + ``"<class> <score>"`` labels)
``/ground_truth``   ``foxglove.SceneUpdate``   ground-truth boxes, when given
``/plan``           ``foxglove.SceneUpdate``   a planner's chosen trajectory (a thick line strip from the
                                               ego origin) and its candidates (faint line strips)
``/gaussians``      ``foxglove.SceneUpdate``   a planner's BEV Gaussians: flat cylinders ``(4σx, 4σy,
                                               0.05 m)`` turned by the Gaussian's angle, class colour,
                                               alpha ∝ opacity
``/camera/<name>``  ``foxglove.CompressedImage`` each camera image, JPEG
``/tf``             ``foxglove.FrameTransform`` ``world → ego`` from the frame's ego pose, when it has one
=================== ========================== =========================================================

Boxes follow mmdet3d's LiDAR convention (bottom centre, ``dx, dy, dz``, yaw about +z); a Foxglove cube is
posed at its *centre*, so the cube's z is ``z + dz / 2`` and its orientation the quaternion
``(0, 0, sin(yaw/2), cos(yaw/2))``. Each ``SceneUpdate`` holds one entity per topic (id = the topic),
so every frame replaces the previous frame's boxes, and a frame with no boxes clears them. Plans and
Gaussians are in the ego frame too (rear axle origin, z = 0), one entity per topic likewise.

The file is written to a temporary name next to ``path`` and renamed on a clean close; an exception
inside ``with McapWriter(path):`` removes the temporary file, so ``path`` never holds a partial file.

The schema dicts below carry the official Foxglove field names (github.com/foxglove/schemas,
``schemas/jsonschema/*.json``), restricted to the fields written here.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from perception.structures import BevGaussians, Boxes3D, Detections, EgoPose, Frame, PlanningOutput
from perception.structures.depth import DepthOutput
from perception.viz.colors import CANDIDATE_COLOR, PLAN_COLOR, class_color

# --------------------------------------------------------------------------------------------
# Foxglove JSON schemas (official field names; subsets of the published schemas)
# --------------------------------------------------------------------------------------------


def _num(desc: str) -> dict:
    return {"type": "number", "description": desc}


_TIME = {
    "type": "object", "title": "time",
    "properties": {"sec": {"type": "integer", "minimum": 0},
                   "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}},
}
_DURATION = {
    "type": "object", "title": "duration",
    "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999}},
}
_VECTOR3 = {"title": "foxglove.Vector3", "type": "object",
            "properties": {"x": _num("x coordinate length"), "y": _num("y coordinate length"),
                           "z": _num("z coordinate length")}}
_QUATERNION = {"title": "foxglove.Quaternion", "type": "object",
               "properties": {"x": _num("x value"), "y": _num("y value"), "z": _num("z value"), "w": _num("w value")}}
_POSE = {"title": "foxglove.Pose", "type": "object", "properties": {"position": _VECTOR3, "orientation": _QUATERNION}}
_COLOR = {"title": "foxglove.Color", "type": "object",
          "properties": {"r": _num("Red value between 0 and 1"), "g": _num("Green value between 0 and 1"),
                         "b": _num("Blue value between 0 and 1"), "a": _num("Alpha value between 0 and 1")}}
_NUMERIC_TYPES = ("UNKNOWN", "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "FLOAT64")
FLOAT32 = 7  # foxglove.NumericType.FLOAT32

POINT_CLOUD_SCHEMA: dict[str, Any] = {
    "title": "foxglove.PointCloud",
    "description": ("A collection of N-dimensional points, which may contain additional fields with information "
                    "like normals, intensity, etc."),
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "pose": _POSE,
        "point_stride": {"type": "integer", "minimum": 0},
        "fields": {"type": "array", "items": {
            "title": "foxglove.PackedElementField", "type": "object",
            "properties": {"name": {"type": "string"}, "offset": {"type": "integer", "minimum": 0},
                           "type": {"title": "foxglove.NumericType",
                                    "oneOf": [{"title": t, "const": i} for i, t in enumerate(_NUMERIC_TYPES)]}},
        }},
        "data": {"type": "string", "contentEncoding": "base64"},
    },
}

_CUBE = {"title": "foxglove.CubePrimitive", "type": "object",
         "properties": {"pose": _POSE, "size": _VECTOR3, "color": _COLOR}}
_TEXT = {"title": "foxglove.TextPrimitive", "type": "object",
         "properties": {"pose": _POSE, "billboard": {"type": "boolean"}, "font_size": {"type": "number"},
                        "scale_invariant": {"type": "boolean"}, "color": _COLOR, "text": {"type": "string"}}}
_POINT3 = {"title": "foxglove.Point3", "type": "object",
           "properties": {"x": _num("x coordinate position"), "y": _num("y coordinate position"),
                          "z": _num("z coordinate position")}}
_LINE = {"title": "foxglove.LinePrimitive", "type": "object",
         "properties": {"type": {"title": "foxglove.LineType",
                                 "oneOf": [{"title": "LINE_STRIP", "const": 0}, {"title": "LINE_LOOP", "const": 1},
                                           {"title": "LINE_LIST", "const": 2}]},
                        "pose": _POSE, "thickness": {"type": "number", "minimum": 0},
                        "scale_invariant": {"type": "boolean"}, "points": {"type": "array", "items": _POINT3},
                        "color": _COLOR}}
_CYLINDER = {"title": "foxglove.CylinderPrimitive", "type": "object",
             "properties": {"pose": _POSE, "size": _VECTOR3, "bottom_scale": {"type": "number"},
                            "top_scale": {"type": "number"}, "color": _COLOR}}
_KEY_VALUE = {"title": "foxglove.KeyValuePair", "type": "object",
              "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}

SCENE_UPDATE_SCHEMA: dict[str, Any] = {
    "title": "foxglove.SceneUpdate",
    "description": "An update to the entities displayed in a 3D scene",
    "type": "object",
    "properties": {
        "deletions": {"type": "array", "items": {
            "title": "foxglove.SceneEntityDeletion", "type": "object",
            "properties": {"timestamp": _TIME,
                           "type": {"title": "foxglove.SceneEntityDeletionType",
                                    "oneOf": [{"title": "MATCHING_ID", "const": 0}, {"title": "ALL", "const": 1}]},
                           "id": {"type": "string"}},
        }},
        "entities": {"type": "array", "items": {
            "title": "foxglove.SceneEntity", "type": "object",
            "properties": {"timestamp": _TIME, "frame_id": {"type": "string"}, "id": {"type": "string"},
                           "lifetime": _DURATION, "frame_locked": {"type": "boolean"},
                           "metadata": {"type": "array", "items": _KEY_VALUE},
                           "cubes": {"type": "array", "items": _CUBE},
                           "cylinders": {"type": "array", "items": _CYLINDER},
                           "lines": {"type": "array", "items": _LINE},
                           "texts": {"type": "array", "items": _TEXT}},
        }},
    },
}

COMPRESSED_IMAGE_SCHEMA: dict[str, Any] = {
    "title": "foxglove.CompressedImage",
    "description": "A compressed image",
    "type": "object",
    "properties": {"timestamp": _TIME, "frame_id": {"type": "string"},
                   "data": {"type": "string", "contentEncoding": "base64"}, "format": {"type": "string"}},
}

FRAME_TRANSFORM_SCHEMA: dict[str, Any] = {
    "title": "foxglove.FrameTransform",
    "description": "A transform between two reference frames in 3D space",
    "type": "object",
    "properties": {"timestamp": _TIME, "parent_frame_id": {"type": "string"}, "child_frame_id": {"type": "string"},
                   "translation": _VECTOR3, "rotation": _QUATERNION},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    s["title"]: s for s in (POINT_CLOUD_SCHEMA, SCENE_UPDATE_SCHEMA, COMPRESSED_IMAGE_SCHEMA, FRAME_TRANSFORM_SCHEMA)
}

# --------------------------------------------------------------------------------------------
# message builders (pure functions: dicts in Foxglove's JSON layout)
# --------------------------------------------------------------------------------------------


def to_ns(t: float) -> int:
    """Seconds → integer nanoseconds, exact to the nanosecond for epoch-scale timestamps (``>= 0``)."""
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"MCAP timestamps must be finite and >= 0 seconds, got {t}")
    sec = math.floor(t)
    return sec * 1_000_000_000 + int(round((t - sec) * 1e9))


def stamp(ns: int) -> dict[str, int]:
    """Nanoseconds → Foxglove ``{sec, nsec}``."""
    return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}


def yaw_quaternion(yaw: float) -> dict[str, float]:
    """Rotation by ``yaw`` about +z as a Foxglove quaternion ``{x, y, z, w}``."""
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}


def _vec(v) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


def _rgba(rgb: tuple[int, int, int], alpha: float) -> dict[str, float]:
    return {"r": rgb[0] / 255, "g": rgb[1] / 255, "b": rgb[2] / 255, "a": float(alpha)}


def _color(name: str, alpha: float) -> dict[str, float]:
    return _rgba(class_color(name), alpha)


_IDENTITY_POSE = {"position": {"x": 0.0, "y": 0.0, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}


def point_cloud_message(ns: int, points: np.ndarray, intensity: np.ndarray | None = None,
                        frame_id: str = "ego") -> dict[str, Any]:
    """``points [N, >=3]`` (+ ``intensity [N]``, zeros when None) → ``foxglove.PointCloud``.

    ``data`` is base64 of ``[N, 4]`` little-endian float32 ``x, y, z, intensity`` (stride 16 bytes).
    """
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] < 3:
        raise ValueError(f"point_cloud_message: expected points [N, >=3], got shape {p.shape}")
    packed = np.zeros((p.shape[0], 4), dtype="<f4")
    packed[:, :3] = p[:, :3]
    if intensity is not None:
        packed[:, 3] = np.asarray(intensity).reshape(-1)
    return {
        "timestamp": stamp(ns), "frame_id": frame_id, "pose": _IDENTITY_POSE, "point_stride": 16,
        "fields": [{"name": n, "offset": 4 * i, "type": FLOAT32} for i, n in enumerate(("x", "y", "z", "intensity"))],
        "data": base64.b64encode(packed.tobytes()).decode("ascii"),
    }


def _entity(ns: int, entity_id: str, metadata: dict[str, Any] | None, frame_id: str = "ego", **primitives) -> dict:
    return {"timestamp": stamp(ns), "frame_id": frame_id, "id": entity_id, "lifetime": {"sec": 0, "nsec": 0},
            "frame_locked": True, "metadata": [{"key": k, "value": str(v)} for k, v in (metadata or {}).items()],
            **primitives}


def scene_update_message(ns: int, boxes: Boxes3D, entity_id: str, scores: np.ndarray | None = None,
                         alpha: float = 0.4, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """``boxes`` (``tensor [N, 7|9]``, mmdet3d LiDAR convention) → ``foxglove.SceneUpdate``.

    One entity ``entity_id`` in ``boxes.frame_id`` (frame-locked, no lifetime) with one cube and one
    text label (``"<class> <score>"``, or ``"<class> #<track>"`` for tracked ground truth) per box.
    """
    names = boxes.names
    cubes, texts = [], []
    for i, (x, y, z, dx, dy, dz, yaw) in enumerate(boxes.tensor[:, :7].astype(np.float64)):
        q = yaw_quaternion(yaw)
        cubes.append({"pose": {"position": _vec((x, y, z + dz / 2)), "orientation": q},
                      "size": _vec((dx, dy, dz)), "color": _color(names[i], alpha)})
        label = names[i]
        if scores is not None:
            label += f" {float(scores[i]):.2f}"
        elif boxes.track_ids is not None:
            label += f" #{int(boxes.track_ids[i])}"
        texts.append({"pose": {"position": _vec((x, y, z + dz + 0.5)), "orientation": q},
                      "billboard": True, "font_size": 14.0, "scale_invariant": True,
                      "color": _color(names[i], 1.0), "text": label})
    return {"deletions": [], "entities": [_entity(ns, entity_id, metadata, boxes.frame_id, cubes=cubes, texts=texts)]}


def _line_strip(poses: np.ndarray, rgb: tuple[int, int, int], alpha: float, thickness: float) -> dict[str, Any]:
    """``poses [T, >=2]`` (ego frame) → a line strip starting at the ego origin."""
    xy = np.vstack([np.zeros((1, 2)), np.asarray(poses, np.float64)[:, :2]])
    return {"type": 0, "pose": _IDENTITY_POSE, "thickness": thickness, "scale_invariant": False,
            "points": [{"x": float(x), "y": float(y), "z": 0.0} for x, y in xy], "color": _rgba(rgb, alpha)}


def plan_message(ns: int, output: PlanningOutput, entity_id: str = "plan", candidates: bool = True,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A planner's output → ``foxglove.SceneUpdate``: the chosen trajectory as a 0.3 m line strip from the
    ego origin, then (``candidates``) each scored candidate as a faint 0.08 m strip, in ``lines`` order."""
    plan = output.plan
    lines = [_line_strip(plan.trajectory.poses, PLAN_COLOR, 1.0, 0.3)]
    if candidates:
        lines += [_line_strip(c.poses, CANDIDATE_COLOR, 0.3, 0.08) for c in plan.candidates]
    return {"deletions": [], "entities": [_entity(ns, entity_id, metadata, plan.trajectory.frame_id, lines=lines)]}


def gaussians_message(ns: int, gaussians: BevGaussians, entity_id: str = "gaussians", frame_id: str = "ego",
                      max_alpha: float = 0.8, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """BEV Gaussians → ``foxglove.SceneUpdate``: per Gaussian a flat cylinder at its mean, ``size (4σx, 4σy,
    0.05)`` (the 2σ ellipse), turned by its angle, in its class colour with alpha ``max_alpha * opacity``."""
    g = gaussians
    cylinders = []
    for (x, y), (sx, sy), rot, op, lab in zip(np.asarray(g.means, np.float64), np.asarray(g.scales, np.float64),
                                              np.asarray(g.rotations, np.float64), np.asarray(g.opacities, np.float64),
                                              np.asarray(g.labels)):
        cylinders.append({"pose": {"position": _vec((x, y, 0.025)), "orientation": yaw_quaternion(rot)},
                          "size": _vec((4 * sx, 4 * sy, 0.05)), "bottom_scale": 1.0, "top_scale": 1.0,
                          "color": _color(g.class_names[int(lab)], max_alpha * float(np.clip(op, 0.0, 1.0)))})
    return {"deletions": [], "entities": [_entity(ns, entity_id, metadata, frame_id, cylinders=cylinders)]}


def compressed_image_message(ns: int, image: np.ndarray, frame_id: str, quality: int = 90) -> dict[str, Any]:
    """``image [H, W, 3]`` uint8 RGB → ``foxglove.CompressedImage`` (JPEG, base64)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return {"timestamp": stamp(ns), "frame_id": frame_id,
            "data": base64.b64encode(buf.getvalue()).decode("ascii"), "format": "jpeg"}


def frame_transform_message(ns: int, pose: EgoPose, parent: str = "world", child: str = "ego") -> dict[str, Any]:
    """``pose.world_from_ego`` → ``foxglove.FrameTransform`` ``parent → child``."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(pose.world_from_ego.rotation).as_quat()
    return {"timestamp": stamp(ns), "parent_frame_id": parent, "child_frame_id": child,
            "translation": _vec(pose.world_from_ego.translation),
            "rotation": {"x": float(x), "y": float(y), "z": float(z), "w": float(w)}}


# --------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------


class McapWriter:
    """Context manager writing Foxglove-readable MCAP to ``path`` (atomically: temp file + rename).

    ``write_frame`` writes one frame's topics; ``write`` logs any Foxglove JSON message on any topic.
    ``close()`` returns ``{"path", "frames", "messages": {topic: count}}``; ``abort()`` discards.
    """

    def __init__(self, path: str | Path, jpeg_quality: int = 90) -> None:
        from mcap.writer import Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = open(self._tmp, "wb")
        self._writer = Writer(self._file)
        self._writer.start(profile="", library="perception.viz.mcap_writer")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.frames = 0
        self.jpeg_quality = jpeg_quality
        self._result: dict[str, Any] | None = None

    # -- low level ---------------------------------------------------------------------------
    def _channel(self, topic: str, schema_name: str) -> int:
        if topic not in self._channels:
            if schema_name not in self._schemas:
                data = json.dumps(SCHEMAS[schema_name]).encode()
                self._schemas[schema_name] = self._writer.register_schema(schema_name, "jsonschema", data)
            self._channels[topic] = self._writer.register_channel(topic, "json", self._schemas[schema_name])
        return self._channels[topic]

    def write(self, topic: str, schema_name: str, log_time_ns: int, message: dict[str, Any]) -> None:
        """Log ``message`` (a dict in ``schema_name``'s JSON layout) on ``topic`` at ``log_time_ns``."""
        if self._result is not None or self._file.closed:
            raise RuntimeError(f"McapWriter({self.path}): already closed")
        channel = self._channel(topic, schema_name)
        seq = self.counts.get(topic, 0)
        self._writer.add_message(channel, log_time=log_time_ns, data=json.dumps(message).encode(),
                                 publish_time=log_time_ns, sequence=seq)
        self.counts[topic] = seq + 1

    # -- one frame ---------------------------------------------------------------------------
    def write_frame(self, frame: Frame, detections: Detections | None = None, ground_truth: Boxes3D | None = None,
                    model: str = "", plan: PlanningOutput | None = None, depth: DepthOutput | None = None) -> None:
        """Write ``frame``'s point cloud, cameras and ego pose, plus ``detections`` / ``ground_truth`` / ``plan``.

        All messages are logged at ``to_ns(frame.timestamp)``. A frame without LiDAR gets no
        ``/lidar`` message; ``detections=None`` (no model ran) no ``/detections`` message, while
        empty detections write an empty scene (clearing the last frame's boxes). ``plan`` writes
        ``/plan`` and, when it has Gaussians, ``/gaussians``. ``depth`` writes each camera's predicted depth
        as a colourised image on ``/depth/<camera>`` (:func:`perception.viz.depth.depth_to_rgb`).
        """
        ns = to_ns(frame.timestamp)
        if frame.lidar:
            pts = frame.points_in_ego()  # [N, C]
            fields = next(iter(frame.lidar.values())).fields
            inten = pts[:, fields.index("intensity")] if "intensity" in fields else None
            self.write("/lidar", "foxglove.PointCloud", ns, point_cloud_message(ns, pts, inten, "ego"))
        meta = {"token": frame.token}
        if detections is not None:
            m = {**meta, "model": model, "num_boxes": len(detections)}
            self.write("/detections", "foxglove.SceneUpdate", ns,
                       scene_update_message(ns, detections.boxes, "detections", detections.scores, 0.4, m))
        if plan is not None:
            m = {**meta, "model": model, "missing": ",".join(plan.missing)}
            self.write("/plan", "foxglove.SceneUpdate", ns, plan_message(ns, plan, "plan", metadata=m))
            if plan.gaussians is not None:
                self.write("/gaussians", "foxglove.SceneUpdate", ns, gaussians_message(
                    ns, plan.gaussians, "gaussians", metadata={**m, "num_gaussians": len(plan.gaussians)}))
        if ground_truth is not None:
            m = {**meta, "num_boxes": len(ground_truth)}
            self.write("/ground_truth", "foxglove.SceneUpdate", ns,
                       scene_update_message(ns, ground_truth, "ground_truth", None, 0.25, m))
        for name, cam in frame.cameras.items():
            self.write(f"/camera/{name}", "foxglove.CompressedImage", ns,
                       compressed_image_message(to_ns(cam.timestamp), cam.image, name, self.jpeg_quality))
        if depth is not None:
            from perception.viz.depth import depth_to_rgb

            for name, dm in depth.maps.items():
                self.write(f"/depth/{name}", "foxglove.CompressedImage", ns,
                           compressed_image_message(to_ns(dm.timestamp), depth_to_rgb(dm), name, self.jpeg_quality))
        if frame.ego_pose is not None:
            self.write("/tf", "foxglove.FrameTransform", ns,
                       frame_transform_message(to_ns(frame.ego_pose.timestamp), frame.ego_pose))
        self.frames += 1

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        """Finish the file and move it to ``path``; returns what was written (idempotent)."""
        if self._result is None:
            self._writer.finish()
            self._file.close()
            os.replace(self._tmp, self.path)
            self._result = {"path": str(self.path), "frames": self.frames, "messages": dict(self.counts)}
        return self._result

    def abort(self) -> None:
        """Discard the file: nothing is left at ``path`` or at the temporary name."""
        if self._result is None:
            if not self._file.closed:
                self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._result = {"path": None, "frames": self.frames, "messages": dict(self.counts), "aborted": True}

    def __enter__(self) -> "McapWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
