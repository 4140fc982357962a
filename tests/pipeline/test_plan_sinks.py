"""A planner's output in the sinks: /plan and /gaussians in the MCAP, drawn on the BEV PNG, the plan columns in parquet."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from PIL import Image

from perception.pipeline.model_stage import FramePrediction
from perception.pipeline.sinks import McapSink, PngSink, PredictionTable, SinkItem
from perception.structures import BevGaussians, Plan, PlanningOutput, Trajectory
from perception.viz.bev import render_bev
from perception.viz.colors import PLAN_COLOR, class_color
from tests.pipeline.planning_helpers import detections
from tests.viz.test_mcap_writer import make_frames

RENDER = {"xy_range": (-20.0, -20.0, 20.0, 20.0), "resolution": 0.2}  # 200 x 200 pixels
CLASSES = ("background", "road", "walkway", "centerline", "static_object", "vehicle", "pedestrian")
T = 0.5 * np.arange(1, 9)


def planning_output(missing: tuple[str, ...] = ()) -> PlanningOutput:
    """Straight ahead at 4 m/s, 3 candidates; 2 Gaussians: a road patch ahead (turned 30°), a faint vehicle."""
    traj = Trajectory(np.column_stack([4.0 * T, np.zeros(8), np.zeros(8)]), T)
    cands = tuple(Trajectory(np.column_stack([4.0 * T, k * 0.2 * T, np.full(8, 0.05 * k)]), T) for k in (-1, 0, 1))
    g = BevGaussians(np.array([[10.0, 5.0], [-8.0, -6.0]]), np.array([[3.0, 1.0], [1.0, 0.5]]),
                     np.array([math.radians(30), 0.0]), np.array([0.9, 0.2]), np.array([1, 5]), CLASSES)
    return PlanningOutput(Plan(traj, cands, np.array([0.2, 0.7, 0.1], np.float32)), g, np.zeros((4, 4), np.uint8), missing)


def items() -> list[SinkItem]:
    """#0: detector + planner; #1: planner only (no detector ran; planned without CAM_R0); #2: no prediction."""
    f = make_frames()
    return [
        SinkItem(f[0], FramePrediction("tok0", f[0].timestamp, "MSF+GaussianFusion", detections(2), planning_output())),
        SinkItem(f[1], FramePrediction("tok1", f[1].timestamp, "GaussianFusion", None, planning_output(("CAM_R0",)))),
        SinkItem(f[2]),
    ]


def test_mcap_plan_and_gaussians_decode_back(tmp_path):
    from mcap.reader import make_reader

    with McapSink(tmp_path / "run.mcap") as sink:
        for it in items():
            sink(it)
    out = sink.close()
    assert out["messages"]["/plan"] == out["messages"]["/gaussians"] == 2 and out["messages"]["/detections"] == 1
    with open(tmp_path / "run.mcap", "rb") as f:
        reader = make_reader(f)
        msgs = {}
        for schema, channel, m in reader.iter_messages(topics=["/plan", "/gaussians"]):
            assert schema.name == "foxglove.SceneUpdate" and schema.encoding == "jsonschema"
            assert {"lines", "cylinders"} <= set(json.loads(schema.data)["properties"]["entities"]["items"]["properties"])
            msgs.setdefault(channel.topic, []).append((m.log_time, json.loads(m.data)))
    po = planning_output()
    (t0, plan), (_, plan1) = msgs["/plan"]
    e = plan["entities"][0]
    assert (e["id"], e["frame_id"], e["frame_locked"]) == ("plan", "ego", True)
    meta = {kv["key"]: kv["value"] for kv in e["metadata"]}
    assert meta == {"token": "tok0", "model": "MSF+GaussianFusion", "missing": ""}
    chosen, *cands = e["lines"]
    assert chosen["type"] == 0 and chosen["thickness"] == 0.3  # a line strip from the ego origin through the 8 poses
    xy = np.array([[p["x"], p["y"]] for p in chosen["points"]])
    np.testing.assert_allclose(xy, np.vstack([[0.0, 0.0], po.plan.trajectory.poses[:, :2]]))
    assert len(cands) == 3 and all(c["color"]["a"] < chosen["color"]["a"] for c in cands)
    np.testing.assert_allclose([[p["y"] for p in c["points"]][-1] for c in cands], [-0.8, 0.0, 0.8])
    assert {kv["key"]: kv["value"] for kv in plan1["entities"][0]["metadata"]}["missing"] == "CAM_R0"

    (tg, gauss), _ = msgs["/gaussians"]
    assert tg == t0
    e = gauss["entities"][0]
    assert (e["id"], e["frame_id"]) == ("gaussians", "ego") and len(e["cylinders"]) == 2
    road, car = e["cylinders"]
    assert road["size"] == {"x": 12.0, "y": 4.0, "z": 0.05} and car["size"] == {"x": 4.0, "y": 2.0, "z": 0.05}
    assert (road["pose"]["position"]["x"], road["pose"]["position"]["y"]) == (10.0, 5.0)
    q = road["pose"]["orientation"]
    assert math.isclose(2 * math.atan2(q["z"], q["w"]), math.radians(30)) and q["x"] == q["y"] == 0.0
    for c, name, op in ((road, "road", 0.9), (car, "vehicle", 0.2)):
        rgb = class_color(name)
        assert [c["color"][k] for k in "rgb"] == [v / 255 for v in rgb] and math.isclose(c["color"]["a"], 0.8 * op)


def test_png_draws_gaussians_and_plan(tmp_path):
    it = items()[1]  # the planner's output, no boxes
    with PngSink(tmp_path / "bev", **RENDER) as sink:
        sink(it)
    img = np.asarray(Image.open(tmp_path / "bev" / "tok1.png").convert("RGB"))
    points = it.frame.points_in_ego()
    po = it.prediction.plan
    np.testing.assert_array_equal(img, render_bev(points, gaussians=po.gaussians, plan=po.plan, **RENDER))
    plain = render_bev(points, **RENDER)

    def pix(x, y):  # ego (x, y) → (row, col) in the 200 x 200 image
        return round((20.0 - x) / 0.2), round((20.0 - y) / 0.2)

    assert tuple(img[pix(8.0, 0.0)]) == tuple(img[pix(16.0, 0.0)]) == PLAN_COLOR  # waypoints 4 and 8 (4 m/s)
    assert tuple(img[pix(15.0, 0.0)]) == PLAN_COLOR and tuple(plain[pix(15.0, 0.0)]) != PLAN_COLOR  # the line
    r, c = pix(10.0, 5.0)  # the road Gaussian's centre: blended towards its class colour
    assert (img[r, c] != plain[r, c]).any()
    road = np.array(class_color("road"))
    assert np.abs(img[r, c] - road).sum() < np.abs(plain[r, c] - road).sum()
    # its 2σ ellipse is turned by 30°: 5 m along its long axis is inside, 5 m across is not
    ax = np.array([math.cos(math.radians(30)), math.sin(math.radians(30))])
    inside, outside = np.array([10.0, 5.0]) + 5 * ax, np.array([10.0, 5.0]) + 5 * ax[::-1] * [-1, 1]
    assert (img[pix(*inside)] != plain[pix(*inside)]).any() and (img[pix(*outside)] == plain[pix(*outside)]).all()


def test_parquet_records_the_plan_and_copes_without_detections(tmp_path):
    sink = PredictionTable(tmp_path / "p.parquet")
    for it in items():
        sink(it)
    out = sink.close()
    assert (out["frames"], out["boxes"], out["plans"]) == (3, 2, 2)
    frames = pd.read_parquet(out["frames_path"])
    assert frames["model"].tolist() == ["MSF+GaussianFusion", "GaussianFusion", None]
    assert frames["has_detections"].tolist() == [True, False, False] and frames["num_boxes"].tolist() == [2, 0, 0]
    assert frames["has_plan"].tolist() == [True, True, False]
    po = planning_output()
    for k in (0, 1):
        np.testing.assert_array_equal(np.stack(frames["plan_poses"][k]), po.plan.trajectory.poses)
        np.testing.assert_array_equal(frames["plan_times"][k], T)
        np.testing.assert_array_equal(frames["plan_candidate_scores"][k], po.plan.scores)
    assert [list(m) for m in frames["plan_missing"][:2]] == [[], ["CAM_R0"]]
    assert frames["num_gaussians"].tolist()[:2] == [2, 2] and pd.isna(frames["num_gaussians"][2])
    assert frames["plan_poses"][2] is None
    assert pd.read_parquet(out["path"])["token"].tolist() == ["tok0", "tok0"]
