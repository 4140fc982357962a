"""Mmdet3dInfoReader on the real nuScenes / Waymo / KITTI info samples in ../shared/data."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from perception.data.common import DataError
from perception.data.mmdet3d_infos import Mmdet3dInfoReader, camera_from_lidar
from perception.geometry.se3 import SE3

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NUSC = DATA / "nuscenes"
NUSC_PKL = NUSC / "n015-2018-07-24-11-22-45+0800.pkl"
WAYMO = DATA / "mmdet3d_infos" / "waymo_kitti_format"
KITTI_DEMO = DATA / "mmdet3d_infos" / "kitti_demo" / "000008.pkl"

pytestmark = [pytest.mark.data, pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")]


def raw_info(pkl: Path) -> dict:
    with open(pkl, "rb") as f:
        return pickle.load(f)["data_list"][0]


@pytest.fixture(scope="module")
def nusc():
    return Mmdet3dInfoReader(NUSC_PKL, dataset="nuscenes")[0]


def test_nuscenes_frame_loads(nusc):
    f = nusc.frame
    assert f.points.points.shape == (34688, 5)
    assert f.points.fields == ("x", "y", "z", "intensity", "ring")
    assert f.points.frame_id == "LIDAR_TOP"
    assert set(f.cameras) == {f"CAM_{c}" for c in ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "BACK", "BACK_LEFT", "BACK_RIGHT")}
    for cam in f.cameras.values():
        assert cam.size == (1600, 900) and cam.image.shape == (900, 1600, 3) and cam.image.std() > 10
    assert f.missing == ()
    assert f.timestamp == pytest.approx(1532402927.647951)
    assert f.ego_pose is not None
    assert np.allclose(f.ego_pose.world_from_ego.translation[:2], [411.3039, 1180.8904], atol=1e-3)
    boxes = nusc.targets.boxes
    assert len(boxes) == 69 and boxes.tensor.shape == (69, 9) and boxes.frame_id == "ego"  # moved from LIDAR_TOP through lidar2ego
    assert boxes.class_names[0] == "car" and (boxes.labels >= 0).sum() == 68  # one box of another class: -1
    assert nusc.targets.attributes["velocity_valid"].sum() == 67  # two NaN velocities in the pkl


def test_nuscenes_ego_is_body_frame(nusc):
    """lidar2ego goes into the rig; a camera exposed 0.5 ms from the sweep sits at its static cam2ego."""
    info = raw_info(NUSC_PKL)
    calib = nusc.frame.calib
    assert np.allclose(calib.ego_from_sensor["LIDAR_TOP"].matrix, info["lidar_points"]["lidar2ego"], atol=1e-6)
    cam2ego = np.asarray(info["images"]["CAM_BACK_LEFT"]["cam2ego"])
    assert np.abs(calib.ego_from_sensor["CAM_BACK_LEFT"].matrix - cam2ego).max() < 0.01
    # and the rig reproduces lidar2cam exactly for every camera
    for cam, ci in info["images"].items():
        assert np.allclose(calib.transform(cam, "LIDAR_TOP").matrix, ci["lidar2cam"], atol=1e-6)


def test_nuscenes_boxes_project_onto_their_2d_centres(nusc):
    """Bottom centres of the LiDAR boxes, through the rig and CAM_FRONT's model, land on the pkl's
    independently computed ``cam_instances`` (camera-frame boxes and their 2D centres)."""
    cam_inst = raw_info(NUSC_PKL)["cam_instances"]["CAM_FRONT"]
    centre_2d = np.array([c["center_2d"] for c in cam_inst])  # [M, 2]
    cam_boxes = np.array([c["bbox_3d"] for c in cam_inst])  # [M, 7] camera frame
    calib, boxes = nusc.frame.calib, nusc.targets.boxes
    in_cam = calib.transform("CAM_FRONT", boxes.frame_id).apply(boxes.bottom_centers.astype(np.float64))
    match = np.linalg.norm(in_cam[:, None] - cam_boxes[None, :, :3], axis=-1).argmin(0)
    assert np.abs(in_cam[match] - cam_boxes[:, :3]).max() < 0.01
    uv, depth, valid = calib.project(boxes.bottom_centers, "CAM_FRONT", source=boxes.frame_id)
    inside = (centre_2d[:, 0] >= 0) & (centre_2d[:, 0] < 1600) & (centre_2d[:, 1] >= 0) & (centre_2d[:, 1] < 900)
    assert valid[match[inside]].all()
    assert np.abs(uv[match[inside]] - centre_2d[inside]).max() < 0.5  # pixels
    # boxes well in front of the camera and near its axis fall inside the image
    front = (depth > 5) & (np.abs(in_cam[:, 0]) < 0.5 * in_cam[:, 2])
    assert front.sum() >= 10 and valid[front].all()


def test_nuscenes_points_project_into_front_camera(nusc):
    f = nusc.frame
    uv, depth, valid = f.calib.project(f.points.xyz, "CAM_FRONT", source="LIDAR_TOP")
    ahead = depth > 1.0
    frac = valid[ahead].mean()
    assert 0.15 < frac < 0.6, frac  # CAM_FRONT sees ~70° of the half-space ahead
    # a point straight ahead of the camera lands near the principal point
    cam = f.calib.cameras["CAM_FRONT"]
    axis = f.calib.transform("LIDAR_TOP", "CAM_FRONT").apply(np.array([[0.0, 0.0, 20.0]]))
    uv0, _, ok = f.calib.project(axis, "CAM_FRONT", source="LIDAR_TOP")
    assert ok[0] and np.allclose(uv0[0], [cam.cx, cam.cy], atol=1e-6)


@pytest.mark.parametrize("pkl", ["waymo_infos_train.pkl", "waymo_infos_val.pkl"])
def test_waymo_kitti_format(pkl):
    reader = Mmdet3dInfoReader(WAYMO / pkl, dataset="waymo")
    s = reader[0]
    f = s.frame
    assert f.points.points.shape == (800, 6)
    assert f.points.fields == ("x", "y", "z", "intensity", "elongation", "timestamp")
    assert f.meta["paths"]["lidar"].endswith("training/velodyne/" + raw_info(WAYMO / pkl)["lidar_points"]["lidar_path"])
    assert f.cameras["CAM_FRONT"].size == (1920, 1280)  # info says .jpg, the sample has .png
    assert f.meta["paths"]["CAM_FRONT"].endswith(".png")
    assert f.ego_pose is not None and f.calib.ego_from_sensor["LIDAR_TOP"] == SE3.identity()  # ego = LiDAR
    assert len(s.targets.boxes) == 1 and s.targets.boxes.class_names == ("Car", "Pedestrian", "Cyclist")
    assert s.targets.boxes.tensor.shape == (1, 7)
    # the rig reproduces the info's lidar2img
    ci = raw_info(WAYMO / pkl)["images"]["CAM_FRONT"]
    pts = np.array([[20.0, 1.0, 0.5], [35.0, -3.0, 1.0], [10.0, 0.0, 1.0]])
    hom = np.c_[pts, np.ones(3)] @ np.asarray(ci["lidar2img"]).T
    uv, _, valid = f.calib.project(pts, "CAM_FRONT", source="LIDAR_TOP")
    assert valid.all() and np.allclose(uv, hom[:, :2] / hom[:, 2:3], atol=1e-3)


def test_kitti_demo_boxes_in_lidar_frame():
    s = Mmdet3dInfoReader(KITTI_DEMO, dataset="kitti")[0]
    f, t = s.frame, s.targets
    assert f.points.points.shape == (17238, 4) and f.cameras["CAM2"].size == (1242, 375)
    # 10 instances: 6 cars with 3D boxes + 4 DontCare regions (no 3D extent)
    assert len(t.boxes) + len(t.ignore_regions_2d) == 10
    assert len(t.boxes) == 6 and t.boxes.names == ["Car"] * 6 and t.ignore_regions_2d.shape == (4, 4)
    assert t.boxes_2d.shape == (6, 4) and t.boxes_2d_camera == "CAM2"
    # camera → LiDAR conversion: the boxes contain the points mmdet3d counted in them
    counts = t.boxes.points_in_boxes(f.points.points).sum(0)
    assert np.abs(counts - t.attributes["num_lidar_pts"]).max() <= 2
    # P2's 4th column is folded into CAM2's extrinsic: projection equals the info's lidar2img
    l2i = np.asarray(raw_info(KITTI_DEMO)["images"]["CAM2"]["lidar2img"])
    uv, _, valid = f.calib.project(f.points.xyz, "CAM2", source="velodyne")
    hom = np.c_[f.points.xyz.astype(np.float64), np.ones(len(f.points))] @ l2i.T
    assert valid.mean() > 0.95 and np.abs(uv[valid] - hom[valid, :2] / hom[valid, 2:3]).max() < 1e-3


def test_kitti_info_resolves_kitti_layout():
    """kitti_infos_train.pkl names bare files; under ../shared/data/kitti they are in training/*."""
    s = Mmdet3dInfoReader(DATA / "mmdet3d_infos" / "kitti_infos_train.pkl", DATA / "kitti", dataset="kitti")[0]
    assert s.frame.meta["paths"]["lidar"].endswith("kitti/training/velodyne/000000.bin")
    assert s.targets.boxes.names == ["Pedestrian"]
    assert s.targets.boxes.points_in_boxes(s.frame.points.points).sum() == s.targets.attributes["num_lidar_pts"][0]


def test_camera_from_lidar_accepts_lidar2img_only():
    ci = raw_info(KITTI_DEMO)["images"]["CAM2"]
    full, k = camera_from_lidar(ci)
    only = {k2: v for k2, v in ci.items() if k2 != "lidar2cam"}
    assert np.allclose(camera_from_lidar(only)[0], full, atol=1e-6)


def _nusc_copy(tmp_path: Path, cut_bytes: int = 0, drop: str | None = None) -> Path:
    """The nuScenes sample in tmp_path (images linked), the point file optionally truncated."""
    info = raw_info(NUSC_PKL)
    shutil.copy(NUSC_PKL, tmp_path / NUSC_PKL.name)
    src = NUSC / info["lidar_points"]["lidar_path"]
    data = src.read_bytes()
    (tmp_path / src.name).write_bytes(data[: len(data) - cut_bytes])
    for cam, ci in info["images"].items():
        if cam != drop:
            (tmp_path / ci["img_path"]).symlink_to(NUSC / ci["img_path"])
    return tmp_path / NUSC_PKL.name


def test_truncated_point_file_raises_naming_it(tmp_path):
    pkl = _nusc_copy(tmp_path, cut_bytes=7)
    with pytest.raises(DataError, match=r"LIDAR_TOP__1532402927647951\.pcd\.bin.*truncated"):
        Mmdet3dInfoReader(pkl, dataset="nuscenes", load_images=False)[0]


def test_missing_point_file_raises_naming_it(tmp_path):
    pkl = _nusc_copy(tmp_path)
    (tmp_path / raw_info(NUSC_PKL)["lidar_points"]["lidar_path"]).unlink()
    with pytest.raises(DataError, match=r"pcd\.bin: point cloud not found"):
        Mmdet3dInfoReader(pkl, dataset="nuscenes")[0]


def test_missing_camera_image_is_recorded(tmp_path):
    pkl = _nusc_copy(tmp_path, drop="CAM_BACK")
    reader = Mmdet3dInfoReader(pkl, dataset="nuscenes", load_images=False)
    f = reader[0].frame
    assert f.missing == ("CAM_BACK",) and reader.missing_counts == {"CAM_BACK": 1}
    assert "CAM_BACK" in f.calib.ego_from_sensor and "CAM_BACK" not in f.calib.cameras  # size unknown
    assert len(f.calib.cameras) == 5
    with pytest.raises(DataError, match=r"CAM_BACK__1532402927637525\.jpg.*image of CAM_BACK not found"):
        Mmdet3dInfoReader(pkl, dataset="nuscenes", strict=True)[0]


def test_waymo_sweeps_move_into_current_frame(tmp_path):
    """A sweep taken from a pose 1 m further along the vehicle's x sees the same points; moved into
    the current frame they are at p + (1, 0, 0)."""
    with open(WAYMO / "waymo_infos_train.pkl", "rb") as f:
        infos = pickle.load(f)
    info = infos["data_list"][0]
    e2g = np.asarray(info["ego2global"])
    shift = np.eye(4)
    shift[0, 3] = 1.0
    info["lidar_sweeps"] = [{"timestamp": info["timestamp"] - 100_000, "ego2global": (e2g @ shift).tolist(),
                             "lidar_points": {"lidar_path": info["lidar_points"]["lidar_path"]}}]
    with open(tmp_path / "infos.pkl", "wb") as f:
        pickle.dump(infos, f)
    reader = Mmdet3dInfoReader(tmp_path / "infos.pkl", WAYMO, dataset="waymo", max_sweeps=3, load_images=False)
    f = reader[0].frame
    assert len(f.sweeps) == 1
    sw = f.sweeps[0]
    assert sw.timestamp == pytest.approx(f.timestamp - 0.1)
    assert np.allclose(sw.xyz - f.points.xyz, [1.0, 0.0, 0.0], atol=1e-3)
    assert np.array_equal(sw.points[:, 3:], f.points.points[:, 3:])
