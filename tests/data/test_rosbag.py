"""ROS recordings: PointCloud2 decoding and its checks, the real Ouster MCAP, round trips through rosbags' writers,
damaged files, reordering."""
from __future__ import annotations

import os

import numpy as np
import pytest

from perception.data.rosbag import (BufferPool, Decoder, MalformedMessage, RecordingError, RosbagReader,
                                    camera_from_info, check_pointcloud2, decode_pointcloud2, iter_recording,
                                    prefetched, topic_counts)
from perception.data.rosbag_export import _Messages, write_recording
from perception.geometry.cameras import KannalaBrandtCamera, PinholeCamera
from perception.geometry.se3 import SE3
from perception.structures import Calibration, CameraImage, Frame, PointCloud, Sample
from tests.conftest import needs_data

OUSTER_TOPIC = "/os1_cloud_node/points"


# ------------------------------------------------------------------------------------------------
# PointCloud2 decoding
# ------------------------------------------------------------------------------------------------


def _cloud_msg(points: np.ndarray, dtype: np.dtype, ros1: bool = False, height: int = 1, bigendian: bool = False,
               ns: int = 5_000_000_123):
    """A real sensor_msgs/PointCloud2 (rosbags type) holding ``points`` packed with the structured ``dtype``."""
    m = _Messages(ros1)
    rec = np.zeros(points.shape[0], dtype)
    for i, name in enumerate(dtype.names):
        rec[name] = points[:, i]
    kinds = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}
    pf = m.T["sensor_msgs/msg/PointField"]
    fields = [pf(name=n, offset=dtype.fields[n][1], datatype=kinds[dtype.fields[n][0].str[1:]], count=1)
              for n in dtype.names]
    width = points.shape[0] // height
    return m.T["sensor_msgs/msg/PointCloud2"](
        header=m.header(ns, "lidar"), height=height, width=width, fields=fields, is_bigendian=bigendian,
        point_step=dtype.itemsize, row_step=dtype.itemsize * width,
        data=np.frombuffer(rec.tobytes(), np.uint8).copy(), is_dense=False)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pointcloud2_any_layout(endian):
    """Padding, mixed datatypes, float64 xyz, big-endian, organised [H, W] with NaN returns."""
    rng = np.random.default_rng(0)
    n = 24
    pts = np.column_stack([rng.normal(size=(n, 3)) * 10, rng.integers(0, 255, n), rng.integers(0, 64, n)])
    pts[[3, 10], 1] = np.nan  # two "no return" points
    dtype = np.dtype({"names": ["ring", "x", "y", "z", "intensity"],
                      "formats": [endian + "u2", endian + "f8", endian + "f8", endian + "f8", endian + "u1"],
                      "offsets": [0, 8, 16, 24, 33], "itemsize": 40})  # ring first, 7 bytes of padding at the end
    src = pts[:, [4, 0, 1, 2, 3]]
    msg = _cloud_msg(src, dtype, height=4, bigendian=endian == ">")
    cloud, nan = decode_pointcloud2(msg, "/t")
    assert nan == 2 and len(cloud) == n - 2
    assert cloud.fields == ("x", "y", "z", "ring", "intensity")
    keep = np.isfinite(pts[:, :3]).all(1)
    np.testing.assert_array_equal(cloud.points, pts[keep][:, [0, 1, 2, 4, 3]].astype(np.float32))
    assert cloud.timestamp == 5.000000123 and cloud.frame_id == "lidar"


def _good():
    dtype = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                      "itemsize": 16})
    return _cloud_msg(np.arange(40, dtype=np.float32).reshape(10, 4), dtype)


@pytest.mark.parametrize("corrupt, reason", [
    (lambda m: setattr(m, "point_step", 0), "point_step 0 must be > 0"),
    (lambda m: setattr(m, "row_step", m.row_step + 4), "row_step"),
    (lambda m: setattr(m, "data", m.data[:-16]), "data has 144 bytes"),
    (lambda m: setattr(m, "width", m.width + 1), "row_step 160 != width 11"),
    (lambda m: setattr(m.fields[3], "offset", 14), "exceeds point_step"),
    (lambda m: setattr(m.fields[2], "name", "w"), "has no 'z' field"),
    (lambda m: setattr(m.fields[2], "datatype", 5), "must be one float32/float64"),
    (lambda m: setattr(m.fields[1], "datatype", 42), "unknown datatype 42"),
    (lambda m: setattr(m.fields[3], "name", "x"), "duplicate field 'x'"),
])
def test_malformed_pointcloud2_rejected(corrupt, reason):
    msg = _good()
    decode_pointcloud2(msg, "/lidar/points")  # the intact one decodes
    corrupt(msg)
    with pytest.raises(MalformedMessage, match=reason) as e:
        decode_pointcloud2(msg, "/lidar/points")
    assert e.value.topic == "/lidar/points" and e.value.stamp_ns == 5_000_000_123
    assert str(e.value).startswith("/lidar/points @ 5.000000123 s")


def test_camera_info_models():
    m = _Messages(ros1=False)
    pin = PinholeCamera(640, 480, 500.0, 510.0, 320.5, 240.5, -0.1, 0.01, 0.001, -0.002, 0.0005)
    kb = KannalaBrandtCamera(800, 800, 300.0, 301.0, 400.0, 399.0, 0.05, -0.01, 0.002, -0.0003)
    assert camera_from_info(m.camera_info(0, "cam", pin), "/cam/camera_info") == pin
    assert camera_from_info(m.camera_info(0, "cam", kb), "/cam/camera_info") == kb
    info = m.camera_info(0, "cam", pin)
    info.distortion_model = "unified"
    with pytest.raises(MalformedMessage, match="'unified' is not supported"):
        camera_from_info(info, "/cam/camera_info")


# ------------------------------------------------------------------------------------------------
# the real Ouster MCAP (ROS1 encoding)
# ------------------------------------------------------------------------------------------------


@pytest.mark.data
@needs_data
def test_ouster_mcap_pointclouds(data_root):
    """Both clouds: exactly width × height minus the NaN returns, every field as the raw buffer holds it."""
    from mcap.reader import make_reader

    path = data_root / "ros" / "ouster_os1_64.mcap"
    # the oracle: the raw bytes through mcap and numpy alone (layout from the Ouster driver's PointCloud2 fields)
    layout = np.dtype({"names": ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "noise", "range"],
                       "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2", "u1", "<u2", "<u4"],
                       "offsets": [0, 4, 8, 16, 20, 24, 26, 28, 32], "itemsize": 48})
    expected = []
    with open(path, "rb") as f:
        for _, _, m in make_reader(f, validate_crcs=True).iter_messages(topics=[OUSTER_TOPIC]):
            raw = bytes(m.data)
            n = 64 * 2048
            rec = np.frombuffer(raw[len(raw) - 1 - n * 48: len(raw) - 1], layout)  # data, then the is_dense byte
            expected.append(rec)
    assert len(expected) == 2

    reader = RosbagReader(path)
    assert reader.reference == "os1_lidar" and len(reader) == 2
    clouds = [m.payload for m in reader.messages() if isinstance(m.payload, PointCloud)]
    assert len(clouds) == 2
    for cloud, rec in zip(clouds, expected):
        finite = np.isfinite(rec["x"]) & np.isfinite(rec["y"]) & np.isfinite(rec["z"])
        assert len(cloud) == 64 * 2048 - int((~finite).sum())
        assert cloud.fields == layout.names
        for name in layout.names:
            np.testing.assert_array_equal(cloud.field(name), rec[name][finite].astype(np.float32))
    st = reader.stats
    assert st.decoded[OUSTER_TOPIC] == 2 and st.nan_points[OUSTER_TOPIC] == sum(
        int((~(np.isfinite(r["x"]) & np.isfinite(r["y"]) & np.isfinite(r["z"]))).sum()) for r in expected)
    # what has no decoder here is skipped and counted, by type
    assert st.unknown_types["ouster_ros/msg/PacketMsg"] == 17 + 206
    assert st.unknown_types["rosgraph_msgs/msg/Log"] == sum(st.messages[t] for t in ("/rosout", "/rosout_agg"))
    assert st.decoded["/os1_cloud_node/imu"] == 17
    # the rig from /tf_static: os1_sensor → os1_lidar is a 180° yaw and 3.6 cm up
    np.testing.assert_allclose(reader.calib.ego_from_sensor["os1_lidar"].matrix,
                               [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0.03618], [0, 0, 0, 1]], atol=1e-12)
    assert reader.ego_frame == "os1_sensor"
    frames = [s.frame for s in reader]
    assert len(frames) == 2 and all("imu" in f.meta for f in frames)


# ------------------------------------------------------------------------------------------------
# writers → reader round trips, damage, order
# ------------------------------------------------------------------------------------------------


def _samples(n: int = 5, nan_every: int = 0, size: tuple[int, int] = (64, 48), points: int = 500):
    """A small synthetic rig: one LiDAR (``points`` per sweep), one pinhole camera ``size`` (w, h); frames at 10 Hz."""
    rng = np.random.default_rng(1)
    cam = PinholeCamera(size[0], size[1], 50.0, 50.0, size[0] / 2 - 0.5, size[1] / 2 - 0.5)
    calib = Calibration({"lidar": SE3.from_rt(np.eye(3), [1.0, 0.0, 1.8]),
                         "cam": SE3.from_rt(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [1.5, 0, 1.5])},
                        {"cam": cam})
    out = []
    for i in range(n):
        t = 100.0 + 0.1 * i
        pts = rng.normal(size=(points, 4)).astype(np.float32) * 10
        if nan_every:
            pts[::nan_every, 0] = np.nan
        img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        out.append(Sample(Frame(f"{i}", t, calib, {"lidar": PointCloud(pts, ("x", "y", "z", "intensity"), t, "lidar")},
                                {"cam": CameraImage(img, cam, t + 0.01, "cam")})))
    return out, calib


@pytest.mark.parametrize("fmt, name", [("ros1", "r.bag"), ("ros2-db3", "r2"), ("ros2-mcap", "r2m")])
def test_round_trip_every_format(tmp_path, fmt, name):
    samples, calib = _samples(nan_every=7)
    path = write_recording(samples, calib, tmp_path / name, fmt, pad=4)
    reader = RosbagReader(path)
    assert reader.reference == "lidar" and set(reader.calib.cameras) == {"cam"}
    assert reader.calib.cameras["cam"] == calib.cameras["cam"]
    for s in calib.sensors:
        np.testing.assert_allclose(reader.calib.ego_from_sensor[s].matrix, calib.ego_from_sensor[s].matrix, atol=1e-12)
    frames = [s.frame for s in reader]
    assert len(frames) == len(reader) == 5
    for f, s in zip(frames, samples):
        src = s.frame.lidar["lidar"].points
        np.testing.assert_array_equal(f.lidar["lidar"].points, src[np.isfinite(src).all(1)])
        np.testing.assert_array_equal(f.cameras["cam"].image, s.frame.cameras["cam"].image)
        assert f.timestamp == s.frame.timestamp and f.source == "rosbag"
    assert reader.stats.nan_points["/lidar/points"] == 5 * len(range(0, 500, 7))
    if fmt == "ros1":  # counts from the index section alone agree with rosbags' full index read
        from rosbags.rosbag1 import Reader

        with Reader(path) as r:
            expected = {c.topic: c.msgcount for c in r.connections}
        assert topic_counts(path) == expected and len(expected) >= 4


def test_buffer_pool_reuses_only_free_buffers():
    pool = BufferPool(keep=2)
    small = pool.take(100)
    assert small.size == 100 and not pool._bufs  # small records: plain allocations
    n = 2 * BufferPool.MIN_BYTES
    a = pool.take(n)
    a_id = id(a.base)  # not a reference: that would keep it busy
    view = a[10:20].view(np.uint16)  # a live view keeps its buffer
    del a
    b = pool.take(n)
    assert id(b.base) != a_id and pool.reused == 0
    del view
    c = pool.take(n - 8)  # free now, and big enough
    assert id(c.base) == a_id and c.size == n - 8 and pool.reused == 1
    del b, c
    d = pool.take(3 * n)  # too big for either: a new buffer replaces a free one (keep=2)
    assert d.size == 3 * n and len(pool._bufs) == 2
    assert pool.take(4 * n).size == 4 * n and len(pool._bufs) == 2  # full, nothing free: not kept


@pytest.mark.parametrize("fmt, name", [("ros1", "r.bag"), ("ros2-mcap", "r2m")])
def test_pooled_reads_never_overwrite_live_clouds(tmp_path, fmt, name):
    """Clouds (320 KB) and images (900 KB) are read into pooled buffers: every one kept alive stays intact,
    and once they are dropped the buffers are reused."""
    samples, calib = _samples(n=6, size=(640, 480), points=20_000)
    path = write_recording(samples, calib, tmp_path / name, fmt)
    frames = [s.frame for s in RosbagReader(path)]  # all held until the end
    for f, s in zip(frames, samples, strict=True):
        np.testing.assert_array_equal(f.lidar["lidar"].points, s.frame.lidar["lidar"].points)
        np.testing.assert_array_equal(f.cameras["cam"].image, s.frame.cameras["cam"].image)
    pool = BufferPool()
    assert sum(len(r.data) for r in iter_recording(path, pool)) > 6 * 20_000 * 16
    # dropped at once: a few buffers go round (an MCAP chunk's messages wait together for its CRC check)
    assert pool.reused >= 4 and len(pool._bufs) <= 4


def test_buffer_pool_realigns_the_next_records():
    pool = BufferPool()
    n = 2 * BufferPool.MIN_BYTES
    a = pool.take(n)
    assert a.__array_interface__["data"][0] % 4 == 0
    pool.realign(a[7:], "/points")  # a cloud 7 bytes into its record: off the boundary by 3
    b = pool.take(n, "/points")
    assert (b.__array_interface__["data"][0] + 7) % 4 == 0 and b.size == n  # the same layout lands on it
    for c in (pool.take(n), pool.take(n, "/other")):  # other topics and copies: on the boundary
        assert c.__array_interface__["data"][0] % 4 == 0
    pool.realign(np.zeros(8, np.uint8)[1:], "/points")  # not a pooled buffer: nothing changes
    assert pool.shifts == {"/points": 1}


@pytest.mark.parametrize("fmt, name, first", [("ros1", "a.bag", 1), ("ros2-mcap", "a2m", 0)])
def test_clouds_are_read_in_place(tmp_path, fmt, name, first):
    """Each large message gets a pooled buffer of its own. ROS1 serialization puts this cloud's data off a
    4-byte boundary: the first is copied, then the pool shifts the topic's records onto it. CDR pads the
    data to 4 bytes from the message start: never off."""
    samples, calib = _samples(n=8, points=20_000)  # several frames per chunk: clouds anywhere in a chunk
    path = write_recording(samples, calib, tmp_path / name, fmt)
    pool, dec, misaligned, clouds = BufferPool(), Decoder(), 0, []
    for raw in iter_recording(path, pool):
        if raw.msgtype == "sensor_msgs/msg/PointCloud2":
            msg = dec.decode(raw)
            misaligned += np.frombuffer(msg.data, np.uint8).__array_interface__["data"][0] % 4 != 0
            clouds.append(decode_pointcloud2(msg, raw.topic, pool=pool)[0].points)
    assert len(clouds) == 8 and misaligned == first
    for got, s in zip(clouds, samples, strict=True):
        np.testing.assert_array_equal(got, s.frame.lidar["lidar"].points)


def test_prefetched_keeps_order_errors_and_stops():
    import threading

    def items():
        yield from range(5)
        raise RecordingError("x.bag", 42, "cut")

    got = []
    with pytest.raises(RecordingError, match="at byte 42"):
        for x in prefetched(items(), 2):
            got.append(x)
    assert got == list(range(5))  # everything before the error, in order

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = prefetched(endless(), 3)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    it.close()  # the consumer stops: the thread ends and closes its source
    assert closed.wait(5) and not any(t.name == "recording-prefetch" for t in threading.enumerate())


def _cut(path, frac: float, dst):
    data = path.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


@pytest.mark.parametrize("fmt", ["ros1", "ros2-mcap", "ros2-db3"])
def test_truncated_file_salvages_complete_messages(tmp_path, fmt):
    samples, calib = _samples(n=10, size=(320, 240))  # 2.3 MB: rosbags' MCAP writer cuts 1 MiB chunks
    path = write_recording(samples, calib, tmp_path / ("full.bag" if fmt == "ros1" else "full"), fmt, chunk_bytes=20_000)
    storage = path if path.is_file() else next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    cut = _cut(storage, 0.6, tmp_path / f"cut{storage.suffix}")
    full = [r.log_time_ns for r in iter_recording(path)]
    salvaged = []
    with pytest.raises(RecordingError) as e:
        for r in iter_recording(cut):
            salvaged.append(r.log_time_ns)
    assert str(cut) in str(e.value) and f"at byte {e.value.offset}" in str(e.value)
    assert 0 < e.value.offset <= cut.stat().st_size
    assert 0 < len(salvaged) < len(full)
    assert salvaged == full[: len(salvaged)] or sorted(salvaged) == sorted(full[: len(salvaged)])
    # through the reader: the complete frames come out, then the error; stats keep it
    reader = RosbagReader(cut)
    frames = []
    with pytest.raises(RecordingError):
        for s in reader:
            frames.append(s.frame)
    assert frames and reader.stats.truncated is not None
    for f in frames:
        src = samples[int(round((f.timestamp - 100.0) * 10))].frame.lidar["lidar"].points
        np.testing.assert_array_equal(f.lidar["lidar"].points, src)


def test_float32_fast_paths_share_copy_and_test_bits():
    """x y z intensity float32: decoded in place from a writable aligned buffer, copied once from a read-only or
    unaligned one, gathered with padding; NaN and +-inf in x/y/z drop the point, a NaN intensity does not."""
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(64, 4)).astype(np.float32)
    pts[5, 0], pts[9, 2], pts[11, 1], pts[20, 3] = np.nan, np.inf, -np.inf, np.nan
    keep = np.isfinite(pts[:, :3]).all(1)
    f4 = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                   "itemsize": 16})
    cloud, nan = decode_pointcloud2(_cloud_msg(pts, f4), "/t")
    assert nan == 3
    np.testing.assert_array_equal(cloud.points, pts[keep])
    clean = _cloud_msg(pts[keep], f4)
    cloud, nan = decode_pointcloud2(clean, "/t")
    assert nan == 0 and np.shares_memory(cloud.points, clean.data) and cloud.points.flags.writeable
    for data in (np.frombuffer(clean.data.tobytes(), np.uint8),                 # read-only
                 np.frombuffer(b"\0" + clean.data.tobytes(), np.uint8)[1:]):    # unaligned
        m = type(clean)(**{**{k: getattr(clean, k) for k in clean.__dataclass_fields__}, "data": data})
        c, nan = decode_pointcloud2(m, "/t")
        assert nan == 0 and not np.shares_memory(c.points, data) and c.points.flags.aligned
        np.testing.assert_array_equal(c.points, pts[keep])
    padded = np.dtype({"names": ["intensity", "x", "y", "z"], "formats": ["<f4"] * 4, "offsets": [0, 8, 12, 16],
                       "itemsize": 24})
    c, nan = decode_pointcloud2(_cloud_msg(pts[:, [3, 0, 1, 2]], padded), "/t")
    assert nan == 3 and c.fields == ("x", "y", "z", "intensity")
    np.testing.assert_array_equal(c.points, pts[keep])


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])
def test_mcap_chunks_and_crcs(tmp_path, compression):
    """An MCAP with CRCs (the mcap writer's): every message back; a flipped byte in a chunk stops the stream
    at that chunk with a CRC error, after the messages of the chunks before it."""
    import struct

    from mcap.writer import CompressionType, Writer

    rng = np.random.default_rng(2)
    payloads = [rng.integers(0, 255, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes() for _ in range(60)]
    good = tmp_path / "good.mcap"
    with open(good, "wb") as f:
        w = Writer(f, chunk_size=20_000, compression=getattr(CompressionType, compression.upper()))
        w.start()
        sid = w.register_schema("test/msg/Blob", "ros2msg", b"uint8[] data")
        cid = w.register_channel("/blob", "cdr", sid)
        for i, p in enumerate(payloads):
            w.add_message(cid, log_time=1000 + i, data=p, publish_time=1000 + i)
        w.finish()
    got = list(iter_recording(good))
    assert [bytes(r.data) for r in got] == payloads and [r.log_time_ns for r in got] == list(range(1000, 1060))
    assert {(r.topic, r.msgtype, r.encoding, r.definition) for r in got} == {("/blob", "test/msg/Blob", "cdr",
                                                                             "uint8[] data")}
    data = bytearray(good.read_bytes())
    chunks, pos = [], 8
    while pos < len(data):
        op, length = struct.unpack_from("<BQ", data, pos)
        if op == 0x06:
            chunks.append((pos, length))
        if op == 0x02:
            break
        pos += 9 + length
    assert len(chunks) >= 3 and all(struct.unpack_from("<I", data, p + 9 + 24)[0] for p, _ in chunks)
    at, length = chunks[1]
    data[at + 9 + length - 5] ^= 0xFF  # inside the second chunk's (compressed) records
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    salvaged = []
    with pytest.raises(RecordingError) as e:
        for r in iter_recording(bad):
            salvaged.append(bytes(r.data))
    assert e.value.offset == at and str(bad) in str(e.value)
    assert salvaged and salvaged == payloads[: len(salvaged)]
    if compression == "none":
        assert "chunk CRC mismatch" in str(e.value)


def test_ros1_bag_without_index_is_read_to_the_end(tmp_path):
    """A bag whose header says index_pos 0 (a recorder that died): every message, then the error saying so."""
    samples, calib = _samples(n=4, size=(64, 48))
    path = write_recording(samples, calib, tmp_path / "r.bag", "ros1")
    data = bytearray(path.read_bytes())
    at = data.index(b"index_pos=") + len(b"index_pos=")
    data[at: at + 8] = bytes(8)
    bad = tmp_path / "noindex.bag"
    bad.write_bytes(bytes(data))
    full = [(r.topic, r.log_time_ns) for r in iter_recording(path)]
    got = []
    with pytest.raises(RecordingError, match="no usable index"):
        for r in iter_recording(bad):
            got.append((r.topic, r.log_time_ns))
    assert sorted(got) == sorted(full) and len(got) > 8


def test_reorder_window_and_late_messages(tmp_path):
    """Header stamps out of order within the window are reordered (counted); older than what left is late."""
    from rosbags.rosbag1 import Writer

    m = _Messages(ros1=True)
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 12})
    stamps_ms = [1000, 1100, 1050, 1200, 1300, 1400, 1150, 1500]  # 1050: 50 ms late; 1150: 250 ms late
    path = tmp_path / "order.bag"
    with Writer(path) as w:
        c = w.add_connection("/points", "sensor_msgs/msg/PointCloud2", typestore=m.store)
        for i, t in enumerate(stamps_ms):
            msg = _cloud_msg(np.full((4, 3), i, np.float32), dtype, ros1=True, ns=t * 1_000_000)
            msg.header.frame_id = "lidar"
            w.write(c, (1000 + 100 * i) * 1_000_000, bytes(m.store.serialize_ros1(msg, "sensor_msgs/msg/PointCloud2")))
    reader = RosbagReader(path, {"reorder_window": 0.2})
    out = [round(x.timestamp * 1000) for x in reader.messages()]
    assert out == [1000, 1050, 1100, 1200, 1300, 1400, 1500]
    assert reader.stats.reordered == 1 and reader.stats.late == {"/points": 1}
    assert reader.stats.calibration_fallbacks == {"lidar": "no /tf_static path from 'lidar' to 'lidar': identity"} or \
        reader.calib.ego_from_sensor["lidar"] == SE3.identity()


def test_malformed_message_in_a_bag_is_counted_and_skipped(tmp_path):
    from rosbags.rosbag1 import Writer

    m = _Messages(ros1=True)
    good = _good()
    path = tmp_path / "bad.bag"
    with Writer(path) as w:
        c = w.add_connection("/points", "sensor_msgs/msg/PointCloud2", typestore=m.store)
        for i in range(3):
            msg = _cloud_msg(np.full((10, 4), i, np.float32), good_dtype(), ros1=True, ns=(1 + i) * 10**9)
            if i == 1:
                msg.row_step = 7  # lies about its size
            w.write(c, (1 + i) * 10**9, bytes(m.store.serialize_ros1(msg, "sensor_msgs/msg/PointCloud2")))
    reader = RosbagReader(path)
    clouds = [x.payload for x in reader.messages()]
    assert [c.timestamp for c in clouds] == [1.0, 3.0]
    assert reader.stats.malformed == {"/points": 1}
    assert reader.stats.malformed_examples == ["/points @ 2.000000000 s: PointCloud2 row_step 7 != width 10 * point_step 16"]
    assert good is not None


def good_dtype():
    return np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12],
                     "itemsize": 16})


def test_check_returns_layout():
    dt = check_pointcloud2(_good(), "/t", 0)
    assert dt.itemsize == 16 and dt.names == ("x", "y", "z", "intensity")


def test_open_reader_rosbag(tmp_path):
    """``--source rosbag --root BAG`` (demo, browse, batch) reads a recording like any other source."""
    from perception.data import SOURCES, open_reader

    samples, calib = _samples(n=3, size=(64, 48))
    path = write_recording(samples, calib, tmp_path / "r.bag", "ros1")
    reader = open_reader("rosbag", path)
    assert "rosbag" in SOURCES and isinstance(reader, RosbagReader) and len(reader) == 3
    assert [s.frame.timestamp for s in reader] == [s.frame.timestamp for s in samples]


def test_replay_benchmark_rows(monkeypatch):
    """tools/benchmark.py replay: both formats, each against the raw read and the library's record read."""
    from tools.bench import replay

    monkeypatch.setattr(replay, "CLOUDS", 3)
    rows = replay.rows(repeats=1)
    stored = [" from storage"] if hasattr(os, "posix_fadvise") else []
    assert [r["op"] for r in rows] == [f"ingest {f}{s}" for f in ("ros1", "ros2-mcap") for s in ["", ""] + stored]
    for r in rows:
        assert r["params"]["clouds"] == 3 and r["median_ms"] > 0 and r["peer_median_ms"] > 0
        assert r["speedup"] == round(r["peer_median_ms"] / r["median_ms"], 3) or abs(
            r["speedup"] - r["peer_median_ms"] / r["median_ms"]) < 2e-3
        assert r["realtime_factor"] > 0 and r["mb_per_s"] > 0


# ------------------------------------------------------------------------------------------------
# ego poses (/tf or Odometry), Imu, depth images: through the reader end to end
# ------------------------------------------------------------------------------------------------


def _pose(i: int, dx: float = 0.0) -> SE3:
    """A drive along a gentle left curve (frame i at 10 Hz), shifted by ``dx`` m in x."""
    yaw = 0.02 * i
    c, s = np.cos(yaw), np.sin(yaw)
    return SE3.from_rt(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), [1.5 * i + dx, 0.1 * i * i, 0.02 * i])


def _write_motion(path, fmt: str, n: int, odometry: bool):
    """A recording with /tf_static, /lidar/points, /tf (world → base_link: :func:`_pose`), and when ``odometry``
    also /odom (Odometry: :func:`_pose` shifted 5 m in x, twist (i, 0, 0) m/s), /imu and /cam/depth (32FC1 with a
    NaN and a negative pixel); returns the depth images written."""
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.rosbag2 import StoragePlugin, Writer as Writer2
    from scipy.spatial.transform import Rotation

    m = _Messages(ros1=fmt == "ros1")
    T = m.T
    writer = Writer1(path) if fmt == "ros1" else Writer2(path, version=9, storage_plugin=StoragePlugin.MCAP)
    conns, depths = {}, []
    rng = np.random.default_rng(3)

    def put(topic, msgtype, ns, msg):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=m.store)
        writer.write(conns[topic], ns, m.serialize(msg, msgtype))

    def vec(x, y, z):
        return T["geometry_msgs/msg/Vector3"](x=float(x), y=float(y), z=float(z))

    def quat(r):
        x, y, z, w = Rotation.from_matrix(r).as_quat()
        return T["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w))

    with writer:
        for i in range(n):
            ns = 1_000_000_000 * 100 + 100_000_000 * i
            if i == 0:
                put("/tf_static", "tf2_msgs/msg/TFMessage", ns, m.tf([
                    m.transform(ns, "base_link", "lidar", SE3.from_rt(np.eye(3), [1.0, 0.0, 1.8])),
                    m.transform(ns, "base_link", "cam", SE3.from_rt(np.eye(3), [1.5, 0.0, 1.5]))]))
            put("/tf", "tf2_msgs/msg/TFMessage", ns, m.tf([m.transform(ns, "world", "base_link", _pose(i))]))
            if odometry:
                p = _pose(i, dx=5.0)
                cov = np.zeros(36)
                odo = T["nav_msgs/msg/Odometry"](
                    header=m.header(ns, "world"), child_frame_id="base_link",
                    pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=T["geometry_msgs/msg/Pose"](
                        position=T["geometry_msgs/msg/Point"](*map(float, p.translation)), orientation=quat(p.rotation)),
                        covariance=cov),
                    twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=T["geometry_msgs/msg/Twist"](
                        linear=vec(i, 0, 0), angular=vec(0, 0, 0.2)), covariance=cov))
                put("/odom", "nav_msgs/msg/Odometry", ns, odo)
                imu = T["sensor_msgs/msg/Imu"](header=m.header(ns, "base_link"), orientation=quat(np.eye(3)),
                                               orientation_covariance=np.zeros(9), angular_velocity=vec(0, 0, 0.2),
                                               angular_velocity_covariance=np.zeros(9),
                                               linear_acceleration=vec(0.5 * i, 0, 9.81),
                                               linear_acceleration_covariance=np.zeros(9))
                put("/imu", "sensor_msgs/msg/Imu", ns - 1_000_000, imu)
                d = rng.uniform(1, 40, (6, 8)).astype(np.float32)
                d[0, 0], d[1, 1] = np.nan, -1.0
                depths.append(d)
                put("/cam/depth", "sensor_msgs/msg/Image", ns, T["sensor_msgs/msg/Image"](
                    header=m.header(ns, "cam"), height=6, width=8, encoding="32FC1", is_bigendian=0, step=32,
                    data=d.view(np.uint8).reshape(-1)))
            pts = rng.normal(size=(200, 4)).astype(np.float32) * 10
            put("/lidar/points", "sensor_msgs/msg/PointCloud2", ns,
                m.pointcloud2(ns, "lidar", pts, ("x", "y", "z", "intensity")))
    return depths


@pytest.mark.parametrize("fmt, name", [("ros1", "m.bag"), ("ros2-mcap", "m2")])
def test_ego_poses_from_tf_and_odometry_imu_and_depth(tmp_path, fmt, name):
    n = 6
    # /tf only: the ego pose of every frame is world → base_link at the sweep's stamp
    _write_motion(tmp_path / name, fmt, n, odometry=False)
    reader = RosbagReader(tmp_path / name)
    assert not reader.has_odometry
    frames = [s.frame for s in reader]
    assert len(frames) == n
    for i, f in enumerate(frames):
        assert f.ego_pose is not None and f.ego_pose.timestamp == pytest.approx(f.timestamp)
        np.testing.assert_allclose(f.ego_pose.world_from_ego.matrix, _pose(i).matrix, atol=1e-9)

    # with Odometry: "auto" takes the poses from it (5 m ahead of /tf); "tf" keeps /tf
    path = tmp_path / f"odo_{name}"
    depths = _write_motion(path, fmt, n, odometry=True)
    for source, dx in (("auto", 5.0), ("odometry", 5.0), ("tf", 0.0)):
        side = []
        reader = RosbagReader(path, {"pose_source": source})
        frames = [s.frame for s in reader]
        assert len(frames) == n and reader.has_odometry
        for i, f in enumerate(frames):
            np.testing.assert_allclose(f.ego_pose.world_from_ego.matrix, _pose(i, dx).matrix, atol=1e-9)
    # Imu and Odometry ride on the next reference sweep (Frame.meta) and go to the side channel with the depth maps
    reader = RosbagReader(path)                                         # (a reader's stats add up over its streams)
    msgs = list(reader.messages(side=lambda topic, obj: side.append((topic, obj))))
    sweeps = [m for m in msgs if m.sensor == "lidar"]
    assert len(sweeps) == n
    for i, s in enumerate(sweeps):
        assert s.meta["imu"].linear_acceleration[0] == pytest.approx(0.5 * i)
        assert s.meta["odometry"].linear_velocity[0] == pytest.approx(i)
        np.testing.assert_allclose(s.meta["odometry"].pose.world_from_ego.matrix, _pose(i, 5.0).matrix, atol=1e-9)
    got = [obj for topic, obj in side if topic == "/cam/depth"]
    assert len(got) == n and {topic for topic, _ in side} == {"/cam/depth", "/imu", "/odom"}
    for d_in, dmap in zip(depths, got):
        want = np.where(np.isfinite(d_in) & (d_in >= 0), d_in, 0.0)
        np.testing.assert_array_equal(dmap.depth, want)
        assert dmap.camera == "cam"
    assert reader.stats.invalid_depth["/cam/depth"] == 2 * n          # the NaN and the negative pixel, counted
    assert reader.stats.decoded["/imu"] == n and reader.stats.decoded["/odom"] == n


@pytest.mark.parametrize("compression", ["BZ2", "LZ4"])
def test_compressed_rosbag1_chunks_read_as_the_plain_ones(tmp_path, compression):
    """Compressed chunks go through the same record parser, from memory, as chunks read from the file."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    String = store.types["std_msgs/msg/String"]
    paths = []
    for name, comp in (("plain.bag", None), ("packed.bag", compression)):
        w = Writer(tmp_path / name)
        if comp:
            w.set_compression(getattr(Writer.CompressionFormat, comp))
        w.chunk_threshold = 600_000
        with w:
            conn = w.add_connection("/chatter", String.__msgtype__, typestore=store)
            for i in range(12):  # 300 KB messages: large ones get pooled buffers from a plain chunk
                w.write(conn, 1000 + i, store.serialize_ros1(String(data=chr(65 + i) * 300_000), String.__msgtype__))
        paths.append(tmp_path / name)
    plain, packed = ([(r.topic, r.log_time_ns, bytes(r.data)) for r in iter_recording(p)] for p in paths)
    assert len(plain) == 12 and packed == plain
