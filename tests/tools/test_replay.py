"""tools/replay.py: KITTI-360 written as a ROS1 bag, a ROS2 db3 and a ROS2 MCAP with rosbags' writers, replayed
through the pipeline, gives the detections of reading the KITTI-360 files directly; the output MCAP reads back."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import needs_data

pytestmark = [pytest.mark.data, needs_data]

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The pipeline's CPU kernels (numba, torch) reduce in thread-dependent order; 1 thread makes runs repeatable."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


FORMATS = [("ros1", "kitti360.bag"), ("ros2-db3", "kitti360_db3"), ("ros2-mcap", "kitti360_mcap")]


@pytest.fixture(scope="module")
def kitti360(data_root):
    from perception.data.kitti360 import Kitti360Reader

    return Kitti360Reader(data_root / "kitti360")


@pytest.fixture(scope="module")
def config():
    from tools.replay import ROOT, load_replay_config

    return load_replay_config(ROOT / "configs/replay/kitti360.py")


@pytest.fixture(scope="module")
def direct(kitti360, config, tmp_path_factory):
    """The pipeline on the KITTI-360 files themselves: the boxes table."""
    import pandas as pd

    from perception.pipeline.app import PipelineConfig, run_pipeline
    from tools.replay import ROOT

    out = tmp_path_factory.mktemp("direct")
    cfg = PipelineConfig(models=tuple((ROOT / c, ROOT / k) for c, k in config["models"]),
                         num_sweeps=config["num_sweeps"], sync_tolerance=config["sync_tolerance"])
    r = run_pipeline(list(kitti360), kitti360.calib, "velodyne", out, cfg, workers=0, total=len(kitti360))
    assert r["frames_out"] == len(kitti360) and not r["errors"]
    return pd.read_parquet(out / "predictions.parquet"), pd.read_parquet(out / "predictions_frames.parquet")


@pytest.fixture(scope="module")
def recordings(kitti360, tmp_path_factory):
    from perception.data.rosbag_export import write_recording

    d = tmp_path_factory.mktemp("bags")
    return {fmt: write_recording(list(kitti360), kitti360.calib, d / name, fmt, chunk_bytes=4_000_000)
            for fmt, name in FORMATS}


BOX = ["class", "score", "x", "y", "z", "dx", "dy", "dz", "yaw"]


@pytest.mark.parametrize("fmt", [f for f, _ in FORMATS])
def test_replay_gives_the_direct_detections(fmt, recordings, direct, config, tmp_path):
    import pandas as pd

    from tools.replay import replay

    boxes, frames = direct
    out = tmp_path / "replay.mcap"
    r = replay(recordings[fmt], config, out, rate=None, progress=False)
    assert r["frames_out"] == len(frames) == 8 and not r["errors"]
    got = pd.read_parquet(out.with_suffix(".parquet"))
    got_frames = pd.read_parquet(r["sinks"]["PredictionTable"]["frames_path"])
    assert len(got) == len(boxes) > 0
    np.testing.assert_array_equal(got["frame_index"], boxes["frame_index"])
    np.testing.assert_allclose(got["timestamp"], boxes["timestamp"], atol=1e-9)  # frame x 0.1 s vs stamp ns / 1e9
    assert list(got["class"]) == list(boxes["class"])
    np.testing.assert_allclose(got[BOX[1:]].to_numpy(float), boxes[BOX[1:]].to_numpy(float), atol=1e-4)
    assert list(got_frames["num_boxes"]) == list(frames["num_boxes"])
    np.testing.assert_allclose(np.stack(got_frames["plan_poses"].map(np.stack)),  # the planner too (cameras + LiDAR)
                               np.stack(frames["plan_poses"].map(np.stack)), atol=1e-3)
    st = r["reader"]
    assert st["malformed"] == {} and st["unknown_types"] == {} and st["truncated"] is None
    assert st["decoded"]["/velodyne/points"] == 8 and st["decoded"]["/image_00/image_raw"] == 8


def test_output_mcap_reads_back(recordings, config, tmp_path):
    """Topics and schemas as Foxglove expects them; chunked, with CRCs that validate."""
    from mcap.reader import make_reader
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    from tools.replay import replay

    out = tmp_path / "out.mcap"
    replay(recordings["ros1"], config, out, rate=None, progress=False)
    with open(out, "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        summary = reader.get_summary()
        topics = {}
        for schema, channel, message in reader.iter_messages():
            topics.setdefault(channel.topic, (schema.name, schema.encoding, channel.message_encoding))
            json.loads(message.data)  # every message is JSON
    assert topics == {
        "/lidar": ("foxglove.PointCloud", "jsonschema", "json"),
        "/detections": ("foxglove.SceneUpdate", "jsonschema", "json"),
        "/plan": ("foxglove.SceneUpdate", "jsonschema", "json"),
        "/gaussians": ("foxglove.SceneUpdate", "jsonschema", "json"),
        "/camera/image_00": ("foxglove.CompressedImage", "jsonschema", "json"),
    }
    assert summary.statistics.message_count == 5 * 8
    chunks = [r for r in StreamReader(str(out), emit_chunks=True, validate_crcs=True).records if isinstance(r, Chunk)]
    assert chunks and all(c.uncompressed_crc != 0 for c in chunks)
    with open(out, "rb") as f:  # one detection message: cubes in the ego frame with labels
        _, _, msg = next(make_reader(f).iter_messages(topics=["/detections"]))
    ent = json.loads(msg.data)["entities"][0]
    assert ent["frame_id"] == "ego" and len(ent["cubes"]) == len(ent["texts"]) > 0


def test_truncated_bag_replays_its_complete_messages(recordings, config, tmp_path, capsys):
    from tools.replay import ROOT, main

    bag = recordings["ros1"]
    data = bag.read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "cut.mcap"
    code = main([str(cut), "--config", str(ROOT / "configs/replay/kitti360.py"), "--rate", "max", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(cut) in err and "at byte" in err and "truncated record" in err
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert 0 < summary["frames_out"] < 8 and not summary["errors"]
    assert summary["reader"]["truncated"] and str(cut) in summary["reader"]["truncated"]
    assert out.exists()  # what was salvaged is in the MCAP


def test_rate_paces_the_stream():
    import time

    from perception.pipeline.sync import SensorMessage
    from perception.structures import EgoPose
    from perception.geometry.se3 import SE3
    from tools.replay import paced, parse_rate

    msgs = [SensorMessage("ego_pose", t, EgoPose(t, SE3.identity())) for t in (10.0, 10.1, 10.3)]
    t0 = time.perf_counter()
    assert list(paced(msgs, 2.0)) == msgs
    assert 0.15 <= time.perf_counter() - t0 < 0.5  # 0.3 s of recording at 2x
    assert parse_rate("max") is None and parse_rate("0.5") == 0.5
