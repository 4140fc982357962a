"""NavsimReader on a tiny synthetic log written in the OpenScene/NAVSIM schema (no real NAVSIM data here).

The ego drives a circle of radius R at yaw rate W in a world frame that is itself rotated and
shifted, so the expected future in the current ego frame is known in closed form:
``(R sin(W dt), R (1 - cos(W dt)), W dt)`` whatever the start frame.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from perception.data.common import DataError
from perception.data.navsim import CAMERAS, LIDAR, NavsimReader, read_pcd

LOG = "2021.05.12.22.00.38_veh-35_01008_01518"
R, W = 20.0, 0.15  # circle radius [m], yaw rate [rad/s]
WORLD_YAW, WORLD_T = 0.5, np.array([664_000.0, 3_997_000.0, 10.0])  # world ← circle frame
L2E_YAW, L2E_T = 0.03, np.array([1.5, 0.0, 1.8])  # lidar → ego
IMG_W, IMG_H, F = 64, 48, 40.0
CAM_IN_EGO = np.array([1.0, 0.0, 1.5])
EGO_FROM_CAM_F0 = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # looks along ego +x
BOX = np.array([10.0, 2.0, 0.9, 4.0, 2.0, 1.8, 0.3])  # centre x, y, z, l, w, h, heading (ego frame)
V_EGO = np.array([3.0, -1.0, 0.0])


def rz(yaw: float) -> np.ndarray:
    return Rotation.from_euler("z", yaw).as_matrix()


def quat_wxyz(m: np.ndarray) -> list[float]:
    x, y, z, w = Rotation.from_matrix(m).as_quat()
    return [w, x, y, z]


def ego2global(t: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rz(WORLD_YAW + W * t)
    m[:3, 3] = rz(WORLD_YAW) @ np.array([R * np.sin(W * t), R * (1 - np.cos(W * t)), 0.0]) + WORLD_T
    return m


def write_pcd(path: Path, points: np.ndarray) -> None:
    """nuPlan-style binary PCD (mixed field types, zero padding after the data)."""
    rec = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"),
                                       ("ring", "<u2"), ("lidar_info", "<i4")])
    for i, f in enumerate(("x", "y", "z", "intensity")):
        rec[f] = points[:, i]
    rec["ring"], rec["lidar_info"] = np.arange(len(points)) % 64, 2
    header = (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity ring lidar_info\n"
              f"SIZE 4 4 4 4 2 4\nTYPE F F F F U I\nCOUNT 1 1 1 1 1 1\nWIDTH {len(points)}\nHEIGHT 1\n"
              f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(points)}\nDATA binary\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + rec.tobytes() + b"\0" * 16)


def box_points_lidar() -> np.ndarray:
    """``[80, 4]``: 50 points inside BOX and 30 outside, in the LiDAR frame."""
    rng = np.random.default_rng(0)
    local = rng.uniform(-0.45, 0.45, (50, 3)) * BOX[3:6]
    inside = local @ rz(BOX[6]).T + BOX[:3]
    outside = rng.uniform([-30, -30, -1], [-5, 30, 3], (30, 3))
    ego = np.concatenate([inside, outside])
    lidar = (ego - L2E_T) @ rz(L2E_YAW)  # inverse of lidar → ego
    return np.c_[lidar, rng.uniform(0, 1, len(lidar))]


def frame_dict(i: int, t: float, token: str) -> dict:
    e2g = ego2global(t)
    cams = {}
    for k, name in enumerate(CAMERAS):
        ego_from_cam = rz(k * np.pi / 4) @ EGO_FROM_CAM_F0
        cams[name] = {
            "data_path": f"{LOG}/{name}/{token}.jpg",
            "sensor2lidar_rotation": rz(L2E_YAW).T @ ego_from_cam,
            "sensor2lidar_translation": rz(L2E_YAW).T @ (CAM_IN_EGO - L2E_T),
            "cam_intrinsic": np.array([[F, 0, IMG_W / 2], [0, F, IMG_H / 2], [0, 0, 1]]),
            "distortion": np.zeros(5),
        }
    return {
        "token": token, "frame_idx": i, "timestamp": int(round(1_620_857_000e6 + t * 1e6)) + (i % 3),
        "log_name": LOG, "log_token": "log0", "scene_name": "log-0001-scene-0001", "scene_token": "scene0",
        "map_location": "us-nv-las-vegas-strip", "roadblock_ids": ["10123"], "vehicle_name": "veh-35",
        "lidar_path": f"{LOG}/MergedPointCloud/{token}.pcd",
        "lidar2ego_translation": L2E_T, "lidar2ego_rotation": quat_wxyz(rz(L2E_YAW)),
        "ego2global_translation": e2g[:3, 3], "ego2global_rotation": quat_wxyz(e2g[:3, :3]),
        "ego_dynamic_state": [R * W, 0.0, 0.0, R * W * W],
        "traffic_lights": [], "driving_command": np.array([0, 0, 1, 0]), "cams": cams,
        "anns": {
            "gt_boxes": BOX[None].copy(), "gt_names": np.array(["vehicle"]),
            "gt_velocity_3d": (V_EGO @ rz(L2E_YAW))[None],  # the converter stores LiDAR-frame velocity
            "instance_tokens": [f"inst{i}"], "track_tokens": ["a1b2c3d4e5f60718"],
        },
    }


def write_log(root: Path, n: int, hz: float, sensors: bool = True) -> tuple[Path, Path]:
    logs, blobs = root / "logs", root / "sensor_blobs"
    logs.mkdir(parents=True, exist_ok=True)
    frames = [frame_dict(i, i / hz, f"tok{i:04d}") for i in range(n)]
    with open(logs / f"{LOG}.pkl", "wb") as f:
        pickle.dump(frames, f)
    if sensors:
        pts = box_points_lidar()
        for fr in frames:
            write_pcd(blobs / fr["lidar_path"], pts)
            for k, c in enumerate(fr["cams"].values()):
                (blobs / c["data_path"]).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (IMG_W, IMG_H), (30 * k, 90, 160)).save(blobs / c["data_path"])
    return logs, blobs


@pytest.fixture()
def log2hz(tmp_path):
    return write_log(tmp_path, 12, 2.0)


def expected_future(dt: np.ndarray) -> np.ndarray:
    a = W * dt
    return np.stack([R * np.sin(a), R * (1 - np.cos(a)), a], axis=1)


def test_frames_load_with_all_sensors(log2hz):
    reader = NavsimReader(*log2hz)
    assert len(reader) == 12
    s = reader[0]
    f = s.frame
    assert f.token == "tok0000" and f.source == "navsim" and f.missing == ()
    assert f.points.points.shape == (80, 6) and f.points.frame_id == LIDAR
    assert f.points.fields == ("x", "y", "z", "intensity", "ring", "lidar_info")
    assert set(f.cameras) == set(CAMERAS) and all(c.size == (IMG_W, IMG_H) for c in f.cameras.values())
    assert f.timestamp == pytest.approx(1_620_857_000.0)
    assert np.allclose(f.ego_pose.world_from_ego.matrix, ego2global(0.0), atol=1e-6)
    assert np.allclose(f.calib.ego_from_sensor[LIDAR].rotation, rz(L2E_YAW), atol=1e-9)
    assert s.targets.driving_command == 2  # one-hot (left, forward, right, unknown)
    assert f.meta["ego_dynamic_state"][0] == pytest.approx(R * W)


def test_boxes_bottom_centre_ego_frame(log2hz):
    s = NavsimReader(*log2hz)[0]
    b = s.targets.boxes
    assert b.frame_id == "ego" and b.names == ["vehicle"] and b.tensor.shape == (1, 9)
    assert np.allclose(b.tensor[0, :7], [10.0, 2.0, 0.9 - 0.9, 4.0, 2.0, 1.8, 0.3], atol=1e-6)
    assert np.allclose(b.velocity[0], V_EGO[:2], atol=1e-5)  # LiDAR-frame velocity rotated back to ego
    assert np.allclose(b.gravity_centers[0], BOX[:3], atol=1e-6)
    # the points written inside the box, moved to ego through the rig, are inside the converted box
    pts = s.frame.calib.ego_from_sensor[LIDAR].apply(s.frame.points.xyz.astype(np.float64))
    assert b.points_in_boxes(pts)[:, 0].sum() == 50
    assert s.targets.attributes["track_token"][0] == "a1b2c3d4e5f60718" and s.targets.boxes.track_ids.shape == (1,)


def test_camera_geometry(log2hz):
    f = NavsimReader(*log2hz)[0].frame
    assert np.allclose(f.calib.ego_from_sensor["CAM_F0"].translation, CAM_IN_EGO, atol=1e-9)
    uv, depth, valid = f.calib.project(BOX[None, :3], "CAM_F0", source="ego")
    d = BOX[:3] - CAM_IN_EGO  # ego x forward, y left, z up → camera (-y, -z, x)
    assert valid[0] and depth[0] == pytest.approx(d[0])
    assert np.allclose(uv[0], [F * -d[1] / d[0] + IMG_W / 2, F * -d[2] / d[0] + IMG_H / 2], atol=1e-6)
    uv, _, valid = f.calib.project(BOX[None, :3], "CAM_B0", source="ego")  # the rear camera does not see it
    assert not valid[0]


def test_ego_future_navsim_convention(log2hz):
    reader = NavsimReader(*log2hz)
    assert reader.frames_without_future == 8  # 12 frames at 2 Hz: only frames 0-3 have 4 s ahead
    for i in range(4):
        traj = reader[i].targets.ego_future
        assert traj is not None and traj.poses.shape == (8, 3)
        assert np.allclose(traj.timestamps, 0.5 * np.arange(1, 9), atol=1e-5)
        assert np.allclose(traj.poses, expected_future(traj.timestamps), atol=1e-6)
    assert all(reader[i].targets.ego_future is None for i in (4, 7, 11))


def test_ego_future_10hz_log_takes_every_fifth_frame(tmp_path):
    logs, blobs = write_log(tmp_path, 45, 10.0, sensors=False)
    reader = NavsimReader(logs, blobs)
    assert reader.frames_without_future == 40
    assert np.array_equal(reader._future_indices(0, 2), 2 + 5 * np.arange(1, 9))
    traj = reader.ego_future(4)
    assert np.allclose(traj.poses, expected_future(0.5 * np.arange(1, 9)), atol=1e-4)
    assert reader.ego_future(5) is None


def test_missing_camera_is_recorded_or_raises_when_strict(log2hz):
    logs, blobs = log2hz
    img = blobs / LOG / "CAM_B0" / "tok0001.jpg"
    img.unlink()
    reader = NavsimReader(logs, blobs)
    f = reader[1].frame
    assert f.missing == ("CAM_B0",) and reader.missing_counts == {"CAM_B0": 1}
    assert "CAM_B0" not in f.cameras and f.calib.cameras["CAM_B0"].width == 1920  # rig kept, nuPlan size
    assert reader[0].frame.missing == ()
    with pytest.raises(DataError, match=r"CAM_B0/tok0001\.jpg: image of CAM_B0 not found"):
        NavsimReader(logs, blobs, strict=True)[1]


def test_missing_and_truncated_files_raise_naming_them(log2hz, tmp_path):
    logs, blobs = log2hz
    pcd = blobs / LOG / "MergedPointCloud" / "tok0002.pcd"
    data = pcd.read_bytes()
    pcd.write_bytes(data[: len(data) - 16 - 40])  # drop the padding and part of the last points
    with pytest.raises(DataError, match=r"tok0002\.pcd: truncated PCD"):
        NavsimReader(logs, blobs)[2]
    pcd.unlink()
    with pytest.raises(DataError, match=r"tok0002\.pcd: point cloud not found"):
        NavsimReader(logs, blobs)[2]
    with pytest.raises(DataError, match="NAVSIM logs folder not found"):
        NavsimReader(tmp_path / "nope", blobs)


def test_filters_and_sensor_selection(log2hz):
    logs, blobs = log2hz
    reader = NavsimReader(logs, blobs, tokens=["tok0003", "tok0005"], cameras=("CAM_F0",), load_lidar=False)
    assert len(reader) == 2 and reader.frames_without_future == 1
    f = reader[0].frame
    assert f.token == "tok0003" and set(f.cameras) == {"CAM_F0"} and f.lidar == {}
    with pytest.raises(DataError, match="no NAVSIM log pickles"):
        NavsimReader(logs, blobs, log_names=["other_log"])


def test_read_pcd_ascii_reorders_fields(tmp_path):
    p = tmp_path / "a.pcd"
    p.write_text("# .PCD v0.7\nVERSION 0.7\nFIELDS intensity x y z\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
                 "WIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n0.5 1 2 3\n0.7 4 5 6\n")
    pts, fields = read_pcd(p)
    assert fields == ("x", "y", "z", "intensity")
    assert np.array_equal(pts, np.array([[1, 2, 3, 0.5], [4, 5, 6, 0.7]], np.float32))
    p.write_text(p.read_text().replace("0.7 4 5 6", "0.7 4 oops 6"))
    with pytest.raises(DataError, match=r"a\.pcd:13: malformed number"):
        read_pcd(p)
    p.write_text(p.read_text().replace("DATA ascii", "DATA binary_compressed"))
    with pytest.raises(DataError, match="unsupported PCD DATA 'binary_compressed'"):
        read_pcd(p)
