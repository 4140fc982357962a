"""Synchronizer: nearest image, missing cameras, out-of-order and late messages, pose interpolation."""
import numpy as np

from perception.geometry.cameras import PinholeCamera
from perception.pipeline.stages import EGO_POSE, SensorMessage, Synchronizer
from perception.structures import SE3, Calibration, CameraImage, EgoPose, PointCloud

CAM = PinholeCamera(8, 4, 5.0, 5.0, 3.5, 1.5)
CALIB = Calibration({"lidar": SE3.identity(), "cam_a": SE3.identity(), "cam_b": SE3.identity()},
                    {"cam_a": CAM, "cam_b": CAM})


def lidar(t, token=""):
    return SensorMessage("lidar", t, PointCloud(np.zeros((1, 3), np.float32), ("x", "y", "z"), t, "lidar"), token)


def image(name, t):
    return SensorMessage(name, t, CameraImage(np.zeros((4, 8, 3), np.uint8), CAM, t, name))


def pose(t, x):
    return SensorMessage(EGO_POSE, t, EgoPose(t, SE3.from_rt(np.eye(3), [x, 0.0, 0.0])))


def test_nearest_image_chosen_and_missing_camera_recorded():
    sync = Synchronizer(CALIB, "lidar", tolerance=0.05, window=0.1)
    msgs = [pose(0.9, 9.0), image("cam_a", 0.97), lidar(1.0, "f1"), image("cam_a", 1.01), image("cam_b", 1.08),
            pose(1.1, 11.0), image("cam_a", 1.3)]
    frames = list(sync.frames(msgs))
    assert len(frames) == 1
    f = frames[0]
    assert f.token == "f1" and f.cameras["cam_a"].timestamp == 1.01  # 0.01 away beats 0.03
    assert "cam_b" not in f.cameras and f.missing == ("cam_b",)  # 0.08 > tolerance
    assert sync.stats.missing == {"cam_b": 1}
    # ego pose interpolated between 0.9 (x=9) and 1.1 (x=11)
    np.testing.assert_allclose(f.ego_pose.world_from_ego.translation, [10.0, 0.0, 0.0])
    # every image not used is counted: cam_a 0.97 and 1.3, cam_b 1.08
    assert sync.stats.unused == {"cam_a": 2, "cam_b": 1}


def test_out_of_order_within_window_is_handled_and_counted():
    sync = Synchronizer(CALIB, "lidar", tolerance=0.02, window=0.15)
    out = []
    for m in [lidar(1.0, "f1"), image("cam_a", 1.1), lidar(1.1, "f2"), pose(1.1, 1.0),
              image("cam_a", 1.0), image("cam_b", 1.0), pose(1.0, 0.0),  # arrive after later messages
              image("cam_b", 1.1), lidar(1.3, "f3"), image("cam_a", 1.3), image("cam_b", 1.3)]:
        out += sync.push(m)
    out += sync.flush()
    assert [f.token for f in out] == ["f1", "f2", "f3"]
    assert out[0].missing == () and out[0].cameras["cam_a"].timestamp == 1.0
    assert out[1].missing == ()
    assert out[2].missing == (EGO_POSE,)  # no pose at or after 1.3: not extrapolated
    assert sync.stats.out_of_order == {"cam_a": 1, EGO_POSE: 1}
    assert sync.stats.late == {} and sync.stats.frames == 3


def test_late_image_recorded_missing_and_counted_late():
    sync = Synchronizer(CALIB, "lidar", tolerance=0.02, window=0.05)
    out = []
    for m in [pose(1.0, 0.0), lidar(1.0, "f1"), image("cam_b", 1.0), pose(1.1, 1.0), lidar(1.1, "f2"),
              image("cam_b", 1.1), image("cam_a", 1.1)]:
        out += sync.push(m)
    assert [f.token for f in out] == ["f1"]  # emitted once 1.1 showed up: 1.0 + tol + window <= 1.1
    assert out[0].missing == ("cam_a",)
    out += sync.push(image("cam_a", 1.0))  # too late for f1
    out += sync.push(lidar(0.95, "stale"))  # a sweep older than an emitted frame: dropped, counted
    out += sync.flush()
    assert [f.token for f in out] == ["f1", "f2"]
    assert sync.stats.late == {"cam_a": 1, "lidar": 1}
    assert sync.stats.missing == {"cam_a": 1}
    assert sync.stats.unused["cam_a"] == 1 and sync.stats.unused["lidar"] == 1


def test_unknown_sensor_counted():
    sync = Synchronizer(CALIB, "lidar")
    assert sync.push(SensorMessage("radar", 1.0, EgoPose(1.0, SE3.identity()))) == []
    assert sync.stats.unknown == {"radar": 1}
