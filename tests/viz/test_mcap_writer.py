"""McapWriter: write three hand-made frames, read them back with the mcap reader, check every topic."""
import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from perception.geometry.cameras import PinholeCamera
from perception.structures import (
    Boxes3D, Calibration, CameraImage, Detections, EgoPose, Frame, PointCloud, SE3,
)
from perception.viz.mcap_writer import McapWriter, to_ns

CAM = PinholeCamera(width=32, height=24, fx=20.0, fy=20.0, cx=16.0, cy=12.0)
CLASSES = ("Car", "Pedestrian")
T0 = 1_700_000_000.5  # exactly representable: frames at T0, T0 + 0.5, T0 + 1.0
EGO_FROM_LIDAR = SE3.from_rt(Rotation.from_euler("z", 90, degrees=True).as_matrix(), [1.0, 0.0, 2.0])


def make_boxes() -> Boxes3D:
    t = np.array([[10.0, 2.0, -1.5, 4.0, 1.8, 1.5, 0.3],
                  [-5.0, -3.0, -1.2, 0.8, 0.6, 1.7, -2.0]], np.float32)  # [2, 7] bottom centre, dims, yaw
    return Boxes3D(t, np.array([0, 1]), CLASSES)


def make_frames() -> list[Frame]:
    """Three frames: #0 has LiDAR, a camera and an ego pose; #1 LiDAR + pose (camera dropped); #2 LiDAR only."""
    rng = np.random.default_rng(0)
    calib = Calibration({"lidar": EGO_FROM_LIDAR, "front": SE3.identity()}, {"front": CAM})
    frames = []
    for i in range(3):
        t = T0 + 0.5 * i
        pts = np.concatenate([rng.uniform(-20, 20, (50 + 10 * i, 3)), rng.uniform(0, 1, (50 + 10 * i, 1))], 1)
        lidar = {"lidar": PointCloud(pts, ("x", "y", "z", "intensity"), t, "lidar")}
        cams = {"front": CameraImage(np.full((24, 32, 3), (200, 40, 10), np.uint8), CAM, t, "front")} if i == 0 else {}
        pose = EgoPose(t, SE3.from_rt(Rotation.from_euler("z", 0.1 * i).as_matrix(), [100.0 + i, 50.0, 0.0])) if i < 2 else None
        frames.append(Frame(f"tok{i}", t, calib, lidar, cams, pose, missing=("front",) if i else ()))
    return frames


def read_all(path):
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        reader = make_reader(f)
        msgs = [(s, c, m, json.loads(m.data)) for s, c, m in reader.iter_messages(log_time_order=True)]
        summary = reader.get_summary()
    return msgs, summary


def write_sample(path):
    frames = make_frames()
    boxes = make_boxes()
    dets = [Detections(boxes, [0.9, 0.55]), Detections(Boxes3D.empty(CLASSES), []), Detections(boxes.select([0]), [0.7])]
    with McapWriter(path) as w:
        for i, f in enumerate(frames):
            w.write_frame(f, dets[i], ground_truth=boxes if i == 0 else None, model="toy")
    return frames, boxes, w.close()


def test_topics_schemas_counts_and_log_times(tmp_path):
    path = tmp_path / "out" / "run.mcap"
    frames, _, result = write_sample(path)
    expected = {"/lidar": 3, "/detections": 3, "/ground_truth": 1, "/camera/front": 1, "/tf": 2}
    assert result == {"path": str(path), "frames": 3, "messages": expected}
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.mcap"]  # no temp file left

    msgs, summary = read_all(path)
    schema_of = {"/lidar": "foxglove.PointCloud", "/detections": "foxglove.SceneUpdate",
                 "/ground_truth": "foxglove.SceneUpdate", "/camera/front": "foxglove.CompressedImage",
                 "/tf": "foxglove.FrameTransform"}
    channels = {c.topic: c for c in summary.channels.values()}
    assert set(channels) == set(schema_of)
    for topic, ch in channels.items():
        schema = summary.schemas[ch.schema_id]
        assert ch.message_encoding == "json" and schema.encoding == "jsonschema"
        assert schema.name == schema_of[topic] == json.loads(schema.data)["title"]
    counts = {summary.channels[cid].topic: n for cid, n in summary.statistics.channel_message_counts.items()}
    assert counts == expected
    # every message at its frame's timestamp, in ns
    frame_ns = [1_700_000_000_500_000_000, 1_700_000_001_000_000_000, 1_700_000_001_500_000_000]
    assert [to_ns(f.timestamp) for f in frames] == frame_ns
    by_topic: dict[str, list] = {}
    for _, ch, m, _ in msgs:
        by_topic.setdefault(ch.topic, []).append(m.log_time)
    assert by_topic["/lidar"] == frame_ns and by_topic["/detections"] == frame_ns
    assert by_topic["/ground_truth"] == frame_ns[:1] and by_topic["/camera/front"] == frame_ns[:1]
    assert by_topic["/tf"] == frame_ns[:2]


def test_point_cloud_decodes_to_ego_points(tmp_path):
    frames, _, _ = write_sample(tmp_path / "a.mcap")
    msgs, _ = read_all(tmp_path / "a.mcap")
    clouds = [d for _, c, _, d in msgs if c.topic == "/lidar"]
    assert clouds[0]["timestamp"] == {"sec": 1_700_000_000, "nsec": 500_000_000}
    for frame, d in zip(frames, clouds):
        assert d["frame_id"] == "ego" and d["point_stride"] == 16
        ns = to_ns(frame.timestamp)
        assert d["timestamp"] == {"sec": ns // 10**9, "nsec": ns % 10**9}
        assert d["fields"] == [{"name": n, "offset": 4 * i, "type": 7} for i, n in enumerate("x y z intensity".split())]
        pts = np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(-1, 4)
        raw = frame.lidar["lidar"].points
        ego = EGO_FROM_LIDAR.apply(raw[:, :3].astype(np.float64)).astype(np.float32)
        np.testing.assert_array_equal(pts[:, :3], frame.points_in_ego()[:, :3])
        np.testing.assert_allclose(pts[:, :3], ego, atol=1e-5)  # rotated + shifted, not the raw sensor points
        np.testing.assert_array_equal(pts[:, 3], raw[:, 3])


def test_boxes_cubes_labels_and_empty_frame(tmp_path):
    _, boxes, _ = write_sample(tmp_path / "a.mcap")
    msgs, _ = read_all(tmp_path / "a.mcap")
    dets = [d for _, c, _, d in msgs if c.topic == "/detections"]
    gt = [d for _, c, _, d in msgs if c.topic == "/ground_truth"]
    (ent,) = dets[0]["entities"]
    assert ent["frame_id"] == "ego" and ent["id"] == "detections" and ent["frame_locked"] is True
    assert len(ent["cubes"]) == 2 and [t["text"] for t in ent["texts"]] == ["Car 0.90", "Pedestrian 0.55"]
    for cube, (x, y, z, dx, dy, dz, yaw) in zip(ent["cubes"], boxes.tensor.astype(np.float64)):
        p, q, s = cube["pose"]["position"], cube["pose"]["orientation"], cube["size"]
        np.testing.assert_allclose([p["x"], p["y"], p["z"]], [x, y, z + dz / 2], atol=1e-6)  # centre, not bottom
        np.testing.assert_allclose([s["x"], s["y"], s["z"]], [dx, dy, dz], atol=1e-6)
        np.testing.assert_allclose([q["x"], q["y"], q["z"], q["w"]], [0, 0, math.sin(yaw / 2), math.cos(yaw / 2)], atol=1e-7)
        heading = Rotation.from_quat([q["x"], q["y"], q["z"], q["w"]]).apply([1.0, 0, 0])
        np.testing.assert_allclose(heading, [math.cos(yaw), math.sin(yaw), 0], atol=1e-6)
    car, ped = ent["cubes"][0]["color"], ent["cubes"][1]["color"]
    assert (car["r"], car["g"], car["b"]) != (ped["r"], ped["g"], ped["b"])  # colour per class
    assert {m["key"]: m["value"] for m in ent["metadata"]} == {"token": "tok0", "model": "toy", "num_boxes": "2"}
    # a frame with no detections clears the scene: same entity id, no cubes
    assert dets[1]["entities"][0]["id"] == "detections" and dets[1]["entities"][0]["cubes"] == []
    assert len(dets[2]["entities"][0]["cubes"]) == 1
    assert [t["text"] for t in gt[0]["entities"][0]["texts"]] == ["Car", "Pedestrian"]


def test_camera_and_transform(tmp_path):
    frames, _, _ = write_sample(tmp_path / "a.mcap")
    msgs, _ = read_all(tmp_path / "a.mcap")
    (img,) = [d for _, c, _, d in msgs if c.topic == "/camera/front"]
    assert img["format"] == "jpeg" and img["frame_id"] == "front"
    pil = Image.open(io.BytesIO(base64.b64decode(img["data"])))
    assert pil.format == "JPEG" and pil.size == (32, 24)
    np.testing.assert_allclose(np.asarray(pil).reshape(-1, 3).mean(0), [200, 40, 10], atol=4)
    tfs = [d for _, c, _, d in msgs if c.topic == "/tf"]
    for frame, tf in zip(frames, tfs):
        assert (tf["parent_frame_id"], tf["child_frame_id"]) == ("world", "ego")
        m = frame.ego_pose.world_from_ego
        tr, r = tf["translation"], tf["rotation"]
        np.testing.assert_allclose([tr["x"], tr["y"], tr["z"]], m.translation)
        np.testing.assert_allclose(Rotation.from_quat([r["x"], r["y"], r["z"], r["w"]]).as_matrix(), m.rotation, atol=1e-12)


def test_interrupted_writer_leaves_no_file(tmp_path):
    path = tmp_path / "run.mcap"
    with pytest.raises(RuntimeError, match="boom"):
        with McapWriter(path) as w:
            w.write_frame(make_frames()[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="closed"):
        w.write_frame(make_frames()[0])


def test_to_ns():
    assert to_ns(0.0) == 0 and to_ns(1.6) == 1_600_000_000 and to_ns(1_700_000_000.25) == 1_700_000_000_250_000_000
    with pytest.raises(ValueError):
        to_ns(-1.0)
