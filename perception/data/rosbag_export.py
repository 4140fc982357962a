"""Write samples (any reader's) as a ROS recording with rosbags' writers: ROS1 ``.bag``, ROS2 ``.db3`` or ``.mcap``.

Topics (``<name>`` is the sensor name of the calibration):

* ``/tf_static`` once, ``ego_frame → <sensor>`` for every sensor (``tf2_msgs/TFMessage``);
* ``/<lidar>/points`` ``sensor_msgs/PointCloud2``: the sweep's fields as little-endian float32, packed
  ``point_step = 4 C + pad`` bytes (``pad`` zero bytes after each point, to exercise padding);
* ``/<camera>/image_raw`` ``sensor_msgs/Image`` (rgb8) and ``/<camera>/camera_info`` (pinhole: ``plumb_bob``;
  Kannala-Brandt: ``equidistant``; other models are not expressible in CameraInfo and raise);
* ``/tf`` ``world → ego_frame`` from the ego pose, when the frame has one.

Stamps are the samples' timestamps in integer nanoseconds, and so are the log times.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.spatial.transform import Rotation

from perception.geometry.cameras import KannalaBrandtCamera, PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import Calibration, Sample
from perception.viz.mcap_writer import to_ns

FORMATS = ("ros1", "ros2-db3", "ros2-mcap")


class _Messages:
    """Builds messages with one rosbags typestore (ROS1 Noetic or ROS2 Humble definitions)."""

    def __init__(self, ros1: bool) -> None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        self.ros1 = ros1
        self.store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
        if TF not in self.store.types:  # rosbags' Noetic store lacks tf2_msgs (tf2_msgs/TFMessage.msg)
            self.store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", TF))
        self.T = self.store.types

    def serialize(self, msg, msgtype: str) -> bytes:
        return bytes(self.store.serialize_ros1(msg, msgtype) if self.ros1 else self.store.serialize_cdr(msg, msgtype))

    def header(self, ns: int, frame_id: str):
        t = self.T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        if self.ros1:
            return self.T["std_msgs/msg/Header"](seq=0, stamp=t, frame_id=frame_id)
        return self.T["std_msgs/msg/Header"](stamp=t, frame_id=frame_id)

    def transform(self, ns: int, parent: str, child: str, t: SE3):
        x, y, z, w = Rotation.from_matrix(t.rotation).as_quat()
        T = self.T
        tr = T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](*map(float, t.translation)),
            rotation=T["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)))
        return T["geometry_msgs/msg/TransformStamped"](header=self.header(ns, parent), child_frame_id=child, transform=tr)

    def tf(self, transforms):
        return self.T["tf2_msgs/msg/TFMessage"](transforms=transforms)

    def pointcloud2(self, ns: int, frame_id: str, points: np.ndarray, fields: tuple[str, ...], pad: int = 0):
        """``points [N, C]`` → PointCloud2 with float32 fields and ``pad`` bytes of padding per point."""
        n, c = points.shape
        step = 4 * c + pad
        buf = np.zeros((n, step), np.uint8)
        buf[:, : 4 * c] = np.ascontiguousarray(points, dtype="<f4").view(np.uint8).reshape(n, 4 * c)
        pf = self.T["sensor_msgs/msg/PointField"]
        return self.T["sensor_msgs/msg/PointCloud2"](
            header=self.header(ns, frame_id), height=1, width=n,
            fields=[pf(name=f, offset=4 * i, datatype=7, count=1) for i, f in enumerate(fields)],
            is_bigendian=False, point_step=step, row_step=step * n, data=buf.reshape(-1), is_dense=False)

    def image(self, ns: int, frame_id: str, rgb: np.ndarray):
        h, w, _ = rgb.shape
        return self.T["sensor_msgs/msg/Image"](header=self.header(ns, frame_id), height=h, width=w, encoding="rgb8",
                                               is_bigendian=0, step=3 * w,
                                               data=np.ascontiguousarray(rgb, np.uint8).reshape(-1))

    def camera_info(self, ns: int, frame_id: str, cam):
        if isinstance(cam, PinholeCamera):
            model, d = "plumb_bob", np.array(cam.dist, np.float64)
        elif isinstance(cam, KannalaBrandtCamera):
            model, d = "equidistant", np.array([cam.k1, cam.k2, cam.k3, cam.k4], np.float64)
        else:
            raise ValueError(f"camera {frame_id}: {type(cam).__name__} has no sensor_msgs/CameraInfo distortion model")
        K = np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1]], np.float64)
        P = np.hstack([K, np.zeros((3, 1))])
        roi = self.T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        arrays = {"D": d, "K": K.reshape(-1), "R": np.eye(3).reshape(-1), "P": P.reshape(-1)}
        if not self.ros1:
            arrays = {k.lower(): v for k, v in arrays.items()}
        return self.T["sensor_msgs/msg/CameraInfo"](header=self.header(ns, frame_id), height=cam.height, width=cam.width,
                                                    distortion_model=model, binning_x=0, binning_y=0, roi=roi, **arrays)


TF, PC2, IMAGE, INFO = ("tf2_msgs/msg/TFMessage", "sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Image",
                        "sensor_msgs/msg/CameraInfo")


def write_recording(samples: Iterable[Sample], calib: Calibration, path: str | Path, fmt: str,
                    ego_frame: str = "base_link", pad: int = 0, chunk_bytes: int | None = None) -> Path:
    """Write ``samples`` to ``path`` as ``fmt`` (one of :data:`FORMATS`); returns the file (or rosbag2 folder).

    ROS2 formats write a rosbag2 folder ``path`` (``metadata.yaml`` + one storage file). ``chunk_bytes``: the ROS1
    writer's chunk size (rosbags' default 1 MiB), smaller to cut a small bag into several chunks.
    """
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.rosbag2 import StoragePlugin, Writer as Writer2

    if fmt not in FORMATS:
        raise ValueError(f"write_recording: format {fmt!r} not in {FORMATS}")
    path = Path(path)
    m = _Messages(ros1=fmt == "ros1")
    if fmt == "ros1":
        writer = Writer1(path)
        if chunk_bytes is not None:
            writer.chunk_threshold = chunk_bytes
    else:
        plugin = StoragePlugin.MCAP if fmt == "ros2-mcap" else StoragePlugin.SQLITE3
        writer = Writer2(path, version=9, storage_plugin=plugin)
    conns: dict[str, object] = {}

    def put(topic: str, msgtype: str, ns: int, msg) -> None:
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=m.store)
        writer.write(conns[topic], ns, m.serialize(msg, msgtype))

    with writer:
        first = True
        for s in samples:
            f = s.frame
            ns = to_ns(f.timestamp)
            if first:
                put("/tf_static", TF, ns, m.tf([m.transform(ns, ego_frame, name, t)
                                                for name, t in calib.ego_from_sensor.items()]))
                first = False
            if f.ego_pose is not None:
                pns = to_ns(f.ego_pose.timestamp)
                put("/tf", TF, pns, m.tf([m.transform(pns, "world", ego_frame, f.ego_pose.world_from_ego)]))
            for name, cloud in f.lidar.items():
                cns = to_ns(cloud.timestamp)
                put(f"/{name}/points", PC2, cns, m.pointcloud2(cns, name, cloud.points, cloud.fields, pad))
            for name, img in f.cameras.items():
                ins = to_ns(img.timestamp)
                put(f"/{name}/camera_info", INFO, ins, m.camera_info(ins, name, img.camera))
                put(f"/{name}/image_raw", IMAGE, ins, m.image(ins, name, img.image))
    return path
