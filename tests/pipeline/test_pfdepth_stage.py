"""PFDepth as a model stage: alone and after another model in the chain, its depth images in the MCAP."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mcap.reader import make_reader

from perception.pipeline.model_stage import FramePrediction, ModelStage
from perception.sim.scene import SimConfig, SimSequence
from perception.structures import Boxes3D, Detections
from perception.viz.mcap_writer import McapWriter

CONFIG = Path(__file__).resolve().parents[2] / "configs/pfdepth/pfdepth_sim_cpu.py"


@pytest.fixture(scope="module")
def stage_and_frame(tmp_path_factory):
    from mmengine.config import Config

    from perception.pipeline.model_stage import build_model

    torch.manual_seed(0)
    model = build_model(dict(Config.fromfile(str(CONFIG)).model))   # untrained weights: the plumbing is under test
    ckpt = tmp_path_factory.mktemp("pfdepth") / "w.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    frame = SimSequence(5, SimConfig(frames=2, rigs=("navsim", "fisheye")))[1].frame   # full-size 640 px cameras
    return ModelStage(CONFIG, ckpt), frame


def test_depth_stage_alone_and_chained(stage_and_frame, tmp_path):
    stage, frame = stage_and_frame
    assert stage.is_depth and not stage.is_planner
    pred = stage(frame)
    assert pred.model == "PFDepth" and pred.detections is None and pred.plan is None
    assert set(pred.depth.maps) == {"CAM_L0", "CAM_F0", "FISHEYE_FRONT", "FISHEYE_LEFT"}
    assert pred.depth.maps["CAM_F0"].depth.shape == (72, 128) and pred.depth.maps["FISHEYE_FRONT"].kind == "range"
    assert all(np.isfinite(m.depth).all() and m.depth.max() > 0 for m in pred.depth.maps.values())

    dets = Detections(Boxes3D.empty(("Car",)), np.zeros(0, np.float32))
    earlier = FramePrediction(frame.token, frame.timestamp, "MSF", dets, None, frame)
    merged = stage(earlier)
    assert merged.model == "MSF+PFDepth" and merged.detections is dets and merged.depth is not None

    path = tmp_path / "d.mcap"
    with McapWriter(path) as w:
        w.write_frame(frame, merged.detections, model=merged.model, depth=merged.depth)
    with open(path, "rb") as fh:
        topics = {ch.topic for _, ch, _ in make_reader(fh).iter_messages()}
    assert {"/depth/CAM_F0", "/depth/FISHEYE_LEFT", "/detections", "/camera/FISHEYE_FRONT"} <= topics
