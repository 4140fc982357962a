import numpy as np
import pytest

from perception.geometry.cameras import PinholeCamera
from perception.structures import (
    Boxes3D, Calibration, CameraImage, DepthMap, Detections, EgoPose, Frame, PointCloud, SE3, Targets, Trajectory,
)

CAM = PinholeCamera(width=64, height=48, fx=50.0, fy=50.0, cx=32.0, cy=24.0)


def make_boxes(n=5, dim=9, seed=0) -> Boxes3D:
    rng = np.random.default_rng(seed)
    t = np.concatenate([rng.normal(size=(n, 3)) * 10, rng.uniform(0.5, 5, size=(n, 3)),
                        rng.uniform(-np.pi, np.pi, size=(n, 1)), rng.normal(size=(n, dim - 7))], axis=1)
    return Boxes3D(t, rng.integers(0, 3, n), ("Car", "Pedestrian", "Cyclist"), track_ids=np.arange(n))


def test_point_cloud_validates_and_names_fields():
    pc = PointCloud(np.zeros((4, 4)), ("x", "y", "z", "intensity"), 1.0, "lidar")
    assert pc.points.dtype == np.float32 and len(pc) == 4 and pc.field("intensity").shape == (4,)
    with pytest.raises(KeyError, match="ring"):
        pc.field("ring")
    with pytest.raises(ValueError, match="PointCloud.points"):
        PointCloud(np.zeros((4, 3)), ("x", "y", "z", "intensity"), 1.0)
    with pytest.raises(ValueError, match="PointCloud.points"):
        PointCloud(np.zeros(12), ("x", "y", "z"), 1.0)
    with pytest.raises(ValueError, match="PointCloud.fields"):
        PointCloud(np.zeros((4, 3)), ("y", "x", "z"), 1.0)
    with pytest.raises(ValueError, match="PointCloud.timestamp"):
        PointCloud(np.zeros((4, 3)), ("x", "y", "z"), float("nan"))
    pc = PointCloud(np.array([[0, 0, 0], [np.nan, 0, 0]]), ("x", "y", "z"), 0.0)
    assert pc.finite_mask().tolist() == [True, False]


def test_camera_image_checks_size_against_model():
    CameraImage(np.zeros((48, 64, 3), np.uint8), CAM, 0.0, "cam")
    with pytest.raises(ValueError, match="does not match"):
        CameraImage(np.zeros((64, 48, 3), np.uint8), CAM, 0.0, "cam")
    with pytest.raises(ValueError, match="uint8"):
        CameraImage(np.zeros((48, 64, 3), np.float32), CAM, 0.0, "cam")


def test_calibration_transforms_between_sensors():
    ego_from_lidar = SE3.from_rt(np.eye(3), [1.0, 0, 2.0])
    ego_from_cam = SE3.from_rt(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [2.0, 0, 1.5])  # x fwd
    calib = Calibration({"lidar": ego_from_lidar, "cam": ego_from_cam}, {"cam": CAM})
    # a point 10 m ahead of the ego at camera height lands on the principal point
    uv, depth, valid = calib.project(np.array([[12.0, 0.0, 1.5]]), "cam", source="ego")
    np.testing.assert_allclose(uv, [[32.0, 24.0]], atol=1e-9)
    assert depth[0] == pytest.approx(10.0) and valid[0]
    np.testing.assert_allclose(calib.transform("cam", "lidar").matrix, ego_from_cam.inverse().matrix @ ego_from_lidar.matrix)
    with pytest.raises(KeyError, match="radar"):
        calib.transform("radar", "lidar")
    with pytest.raises(ValueError, match="no extrinsic"):
        Calibration({"lidar": ego_from_lidar}, {"cam": CAM})
    with pytest.raises(ValueError, match="expected SE3"):
        Calibration({"lidar": np.eye(4)})


def test_ego_pose_rejects_non_finite_and_non_rigid():
    EgoPose(0.0, np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        EgoPose(0.0, np.full((4, 4), np.inf))
    with pytest.raises(ValueError, match="orthonormal"):
        EgoPose(0.0, np.diag([2.0, 1, 1, 1]))


def test_boxes_round_trip_mmdet3d_exactly():
    from mmdet3d.structures import LiDARInstance3DBoxes

    for dim in (7, 9):
        boxes = make_boxes(dim=dim)
        mm = boxes.to_mmdet3d()
        assert isinstance(mm, LiDARInstance3DBoxes) and mm.box_dim == dim
        back = Boxes3D.from_mmdet3d(mm, boxes.labels, boxes.class_names)
        assert np.array_equal(back.tensor, boxes.tensor)
        # the same geometry in both libraries
        np.testing.assert_allclose(mm.gravity_center.numpy(), boxes.gravity_centers, atol=1e-5)
        np.testing.assert_allclose(np.sort(mm.corners.numpy().reshape(-1, 3), 0),
                                   np.sort(boxes.corners().reshape(-1, 3), 0), atol=1e-4)


def test_boxes_points_inside_and_transform():
    boxes = Boxes3D(np.array([[10, 0, 0, 4, 2, 1.5, np.pi / 2]]), [0], ("Car",))
    pts = np.array([[10, 1.9, 0.5], [10, 2.1, 0.5], [11.1, 0, 0.5], [10, 0, -0.1]])
    assert boxes.points_in_boxes(pts)[:, 0].tolist() == [True, False, False, False]
    moved = boxes.transform(SE3.from_rt(np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float), [0, 0, 1]), "world")
    np.testing.assert_allclose(moved.tensor[0, :3], [0, 10, 1], atol=1e-6)
    np.testing.assert_allclose([np.cos(moved.yaw[0]), np.sin(moved.yaw[0])], [-1, 0], atol=1e-6)
    assert moved.frame_id == "world"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tensor=np.zeros((2, 6)), labels=[0, 0]), r"\[N, 7\]"),
        (dict(tensor=np.zeros((2, 7)), labels=[0]), "labels"),
        (dict(tensor=np.full((1, 7), np.nan), labels=[0]), "non-finite"),
        (dict(tensor=-np.ones((1, 7)), labels=[0]), "non-negative"),
        (dict(tensor=np.zeros((1, 7)), labels=[5]), "labels"),
    ],
)
def test_boxes_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Boxes3D(class_names=("Car",), **kwargs)


def test_detections_trajectory_depth_validation():
    boxes = make_boxes(3)
    assert len(Detections(boxes, [0.1, 0.5, 0.9])) == 3
    with pytest.raises(ValueError, match="scores"):
        Detections(boxes, [0.1])
    traj = Trajectory(np.zeros((8, 3)), np.arange(1, 9) * 0.5)
    assert traj.xy.shape == (8, 2)
    with pytest.raises(ValueError, match="increasing"):
        Trajectory(np.zeros((2, 3)), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[T, 3\]"):
        Trajectory(np.zeros((2, 2)), [1.0, 2.0])
    d = DepthMap(np.ones((4, 5)), "cam", 0.0)
    assert d.valid.all()
    with pytest.raises(ValueError, match="finite"):
        DepthMap(np.full((4, 5), np.nan), "cam", 0.0)


def test_frame_checks_sensors_and_targets_lengths():
    calib = Calibration({"lidar": SE3.identity(), "cam": SE3.identity()}, {"cam": CAM})
    pc = PointCloud(np.zeros((3, 3)), ("x", "y", "z"), 0.0, "lidar")
    f = Frame("t0", 0.0, calib, lidar={"lidar": pc}, missing=("cam",))
    assert f.points is pc and f.missing == ("cam",)
    with pytest.raises(ValueError, match="missing from calibration"):
        Frame("t0", 0.0, calib, lidar={"top": pc})
    boxes = make_boxes(2)
    with pytest.raises(ValueError, match="boxes_2d"):
        Targets(boxes, boxes_2d=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="attributes"):
        Targets(boxes, attributes={"difficulty": np.zeros(3)})
