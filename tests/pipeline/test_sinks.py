"""Sinks: parquet round trip (zero-box frames kept), BEV PNGs by token, MCAP via McapSink, MultiSink."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from perception.pipeline.model_stage import FramePrediction
from perception.pipeline.sinks import (
    McapSink, MultiSink, PngSink, PredictionTable, SinkItem, as_sink_item, safe_name,
)
from perception.pipeline.types import Preprocessed
from perception.structures import Boxes3D, Detections, Targets
from perception.viz.bev import render_bev
from tests.viz.test_mcap_writer import CLASSES, make_boxes, make_frames

RENDER = {"xy_range": (-25.0, -25.0, 25.0, 25.0), "resolution": 0.5}  # small images: fast


def make_items() -> list[SinkItem]:
    """#0: 2 boxes (9-dim, with velocity) + ground truth; #1: a prediction with zero boxes; #2: no prediction."""
    frames, boxes = make_frames(), make_boxes()
    b9 = Boxes3D(np.concatenate([boxes.tensor, [[1.0, 0.5], [0.0, -0.25]]], 1), boxes.labels, CLASSES)
    return [
        SinkItem(frames[0], FramePrediction("tok0", frames[0].timestamp, "toy", Detections(b9, [0.9, 0.55])), Targets(boxes)),
        SinkItem(frames[1], FramePrediction("tok1", frames[1].timestamp, "toy", Detections(Boxes3D.empty(CLASSES, 9), []))),
        SinkItem(frames[2]),
    ]


def test_prediction_table_round_trip_keeps_empty_frames(tmp_path):
    items = make_items()
    sink = PredictionTable(tmp_path / "preds.parquet")
    for it in items:
        sink(it)
    out = sink.close()
    assert out == {"path": str(tmp_path / "preds.parquet"), "frames_path": str(tmp_path / "preds_frames.parquet"),
                   "frames": 3, "boxes": 2, "frames_without_boxes": 2, "plans": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.parquet", "preds_frames.parquet"]

    boxes = pd.read_parquet(out["path"])
    t = items[0].prediction.detections.boxes.tensor  # [2, 9]
    assert len(boxes) == 2 and boxes["token"].tolist() == ["tok0", "tok0"]
    assert boxes["class"].tolist() == ["Car", "Pedestrian"] and boxes["model"].tolist() == ["toy", "toy"]
    assert boxes["timestamp"].tolist() == [items[0].frame.timestamp] * 2
    np.testing.assert_array_equal(boxes["score"].to_numpy(), np.float32([0.9, 0.55]))
    np.testing.assert_array_equal(boxes[["x", "y", "z", "dx", "dy", "dz", "yaw", "vx", "vy"]].to_numpy(), t)

    frames = pd.read_parquet(out["frames_path"])
    assert frames["token"].tolist() == ["tok0", "tok1", "tok2"]
    assert frames["num_boxes"].tolist() == [2, 0, 0]
    assert frames["has_prediction"].tolist() == [True, True, False]
    assert frames["model"].tolist() == ["toy", "toy", None]
    assert frames["timestamp"].tolist() == [it.frame.timestamp for it in items]


def test_prediction_table_empty_run_still_writes_typed_tables(tmp_path):
    out = PredictionTable(tmp_path / "p.parquet").close()
    boxes, frames = pd.read_parquet(out["path"]), pd.read_parquet(out["frames_path"])
    assert len(boxes) == 0 and "yaw" in boxes.columns and len(frames) == 0 and "num_boxes" in frames.columns


def test_png_sink_writes_token_named_bev_images(tmp_path):
    items = make_items()
    items[1] = SinkItem(replace(items[1].frame, token="seq/01"), None)
    sink = PngSink(tmp_path / "bev", **RENDER)
    for it in items:
        sink(it)
    assert sink.close() == {"dir": str(tmp_path / "bev"), "frames": 3, "written": 3, "skipped": 0}
    assert sorted(p.name for p in (tmp_path / "bev").iterdir()) == ["seq_01.png", "tok0.png", "tok2.png"]
    img = Image.open(tmp_path / "bev" / "tok0.png")
    assert img.format == "PNG" and img.size == (100, 100)
    det = items[0].prediction.detections
    expected = render_bev(items[0].frame.points_in_ego(), det.boxes, scores=det.scores, **RENDER)
    np.testing.assert_array_equal(np.asarray(img.convert("RGB")), expected)
    # the boxes are drawn: the image differs from the points-only rendering
    assert (expected != render_bev(items[0].frame.points_in_ego(), **RENDER)).any()

    every = PngSink(tmp_path / "every2", every=2, **RENDER)
    for it in make_items():
        every(it)
    assert every.close()["written"] == 2
    assert sorted(p.name for p in (tmp_path / "every2").iterdir()) == ["tok0.png", "tok2.png"]
    assert safe_name("../a b") == "_a_b"


def test_multi_sink_with_mcap(tmp_path):
    from mcap.reader import make_reader

    sink = MultiSink(PredictionTable(tmp_path / "p.parquet"), PngSink(tmp_path / "bev", **RENDER),
                     McapSink(tmp_path / "run.mcap"))
    for it in make_items():
        sink(it)
    out = sink.close()
    assert set(out) == {"PredictionTable", "PngSink", "McapSink"}
    assert out["PredictionTable"]["boxes"] == 2 and out["PngSink"]["written"] == 3
    assert out["McapSink"]["messages"] == {"/lidar": 3, "/detections": 2, "/ground_truth": 1,
                                           "/camera/front": 1, "/tf": 2}
    with open(tmp_path / "run.mcap", "rb") as f:
        gt = [json.loads(m.data) for _, _, m in make_reader(f).iter_messages(topics=["/ground_truth"])]
    assert len(gt[0]["entities"][0]["cubes"]) == 2


def test_interrupted_sinks_leave_no_partial_outputs(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with MultiSink(PredictionTable(tmp_path / "p.parquet"), McapSink(tmp_path / "run.mcap")) as sink:
            sink(make_items()[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_sink_items():
    items = make_items()
    frame = items[0].frame
    assert as_sink_item(frame) == SinkItem(frame)
    assert as_sink_item(Preprocessed(frame)).frame is frame
    with pytest.raises(TypeError, match="needs its Frame"):
        as_sink_item(items[0].prediction)
    with pytest.raises(ValueError, match="paired with frame"):
        SinkItem(items[1].frame, items[0].prediction)
