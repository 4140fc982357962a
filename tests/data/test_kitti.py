"""KITTI object and KITTI-360 readers on the real samples in ../shared/data."""
import shutil

import numpy as np
import pytest

from perception.data.common import DataError
from perception.data.kitti import CLASSES, KittiReader, kitti_difficulty, read_calib
from perception.data.kitti360 import Kitti360Reader
from perception.structures import Boxes3D
from perception.viz.camera import box_image_rects
from tests.conftest import needs_data

pytestmark = [needs_data, pytest.mark.data]


def iou_2d(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def kitti(data_root):
    return list(KittiReader(data_root / "kitti", split="train"))


def test_kitti_frames_load(kitti):
    assert [s.frame.token for s in kitti] == [f"{i:06d}" for i in range(6)]
    pts = kitti[1].frame.points
    assert pts.points.shape == (120268, 4) and pts.fields == ("x", "y", "z", "intensity")
    img = kitti[1].frame.cameras["CAM2"]
    assert img.image.shape == (375, 1242, 3)
    assert kitti[1].targets.boxes.class_names == CLASSES


def test_projected_boxes_match_label_2d_boxes(kitti):
    """Labels → LiDAR boxes → back through our Calibration into image_2: the 2D boxes agree."""
    ious = []
    for s in kitti:
        t = s.targets
        rects, in_front = box_image_rects(s.frame.calib, "CAM2", t.boxes)
        for i, name in enumerate(t.attributes["name"]):
            if name in ("Car", "Pedestrian", "Cyclist"):
                assert in_front[i]
                ious.append(iou_2d(rects[i], t.boxes_2d[i]))
    assert len(ious) >= 8
    assert np.median(ious) >= 0.75, ious


def test_boxes_within_40m_contain_points(kitti):
    checked = 0
    for s in kitti:
        boxes = s.targets.boxes
        counts = boxes.points_in_boxes(s.frame.points.xyz).sum(axis=0)
        near = np.linalg.norm(boxes.gravity_centers[:, :2], axis=1) <= 40
        assert (counts[near] > 0).all(), (s.frame.token, counts, near)
        checked += int(near.sum())
    assert checked >= 5


def test_boxes_round_trip_through_mmdet3d(kitti):
    for s in kitti:
        b = s.targets.boxes
        back = Boxes3D.from_mmdet3d(b.to_mmdet3d(), b.labels, b.class_names)
        assert np.array_equal(back.tensor, b.tensor) and np.array_equal(back.labels, b.labels)


def test_boxes_agree_with_mmdet3d_camera_box_conversion(kitti, data_root):
    """Our camera→LiDAR box conversion agrees with mmdet3d's CameraInstance3DBoxes.convert_to."""
    import torch
    from mmdet3d.structures import Box3DMode, CameraInstance3DBoxes

    calib = read_calib(data_root / "kitti/training/calib/000001.txt")
    rows = [ln.split() for ln in (data_root / "kitti/training/label_2/000001.txt").read_text().splitlines()]
    rows = [r for r in rows if r[0] != "DontCare"]
    cam = np.array([[float(v) for v in r[11:14]] + [float(r[10]), float(r[8]), float(r[9]), float(r[14])] for r in rows])
    mm = CameraInstance3DBoxes(torch.tensor(cam, dtype=torch.float32)).convert_to(
        Box3DMode.LIDAR, torch.tensor(np.linalg.inv(calib.rect_from_velo), dtype=torch.float32))
    ours = kitti[1].targets.boxes.tensor
    np.testing.assert_allclose(mm.tensor.numpy()[:, :6], ours[:, :6], atol=2e-3)
    dyaw = np.angle(np.exp(1j * (mm.tensor.numpy()[:, 6] - ours[:, 6])))
    np.testing.assert_allclose(dyaw, 0, atol=2e-2)  # mmdet3d drops the small non-axis-aligned rotation


def test_dontcare_kept_as_ignore_regions(kitti):
    t = kitti[1].targets
    assert t.ignore_regions_2d.shape == (4, 4)
    assert list(t.attributes["name"]) == ["Truck", "Car", "Cyclist"]
    assert t.boxes.labels.tolist() == [-1, 2, 1]


def test_difficulty_levels():
    d = kitti_difficulty(np.array([50, 30, 30, 10]), np.array([0, 0.2, 0.4, 0]), np.array([0, 1, 2, 0]))
    assert d.tolist() == [0, 1, 2, -1]


def copy_kitti(data_root, tmp_path):
    root = tmp_path / "kitti"
    shutil.copytree(data_root / "kitti", root)
    return root


def test_truncated_bin_names_file(data_root, tmp_path):
    root = copy_kitti(data_root, tmp_path)
    f = root / "training/velodyne/000002.bin"
    f.write_bytes(f.read_bytes()[:-6])
    reader = KittiReader(root)
    reader[0]
    with pytest.raises(DataError, match=r"000002\.bin.*truncated"):
        reader[2]


def test_malformed_calib_names_file_and_line(data_root, tmp_path):
    root = copy_kitti(data_root, tmp_path)
    f = root / "training/calib/000003.txt"
    lines = f.read_text().splitlines()
    lines[4] = "R0_rect: 1 0 0 0 1 0 0 0 x"
    f.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"000003\.txt:5: malformed number"):
        KittiReader(root)[3]


def test_missing_file_names_it(data_root, tmp_path):
    root = copy_kitti(data_root, tmp_path)
    (root / "training/image_2/000004.png").unlink()
    with pytest.raises(DataError, match=r"000004\.png: image not found"):
        KittiReader(root)[4]


def test_kitti360_sweeps_and_rig(data_root):
    reader = Kitti360Reader(data_root / "kitti360")
    assert len(reader) == 8
    s = reader[0]
    f = s.frame
    assert f.points.points.shape[1] == 4 and len(f.points) > 100_000
    assert set(f.calib.cameras) == {"image_00", "image_02", "image_03"}
    assert f.missing == ("image_02", "image_03")  # fisheye images are not in the sample
    assert f.cameras["image_00"].image.shape == (376, 1408, 3)
    # points ahead of the car project into the perspective image, with plausible depth
    uv, depth, valid = f.calib.project(f.points.xyz, "image_00", source="velodyne")
    assert valid.sum() > 10_000 and np.median(depth[valid]) < 40
    # the fisheyes look sideways: the left one sees points at +y (left) of the car
    ego = f.calib.ego_from_sensor["velodyne"].apply(f.points.xyz.astype(np.float64))
    _, _, valid_left = f.calib.project(ego, "image_02", source="ego")
    assert np.median(ego[valid_left, 1]) > 0
    _, _, valid_right = f.calib.project(ego, "image_03", source="ego")
    assert np.median(ego[valid_right, 1]) < 0
    # ego is x forward, y left, z up: the LiDAR sits ~1.7 m above the pose origin's ground-ish level
    assert f.calib.ego_from_sensor["velodyne"].translation[2] > 0
    assert f.calib.ego_from_sensor["image_00"].apply(np.array([[0.0, 0, 10]]))[0, 0] > 9  # camera looks forward
