"""Model stages chain: a detector's boxes reach GaussianFusion as agent tokens; one merged prediction, in process and on Ray."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from perception.pipeline.app import DEFAULT_MODELS, DEPTH, DETECTOR, PLANNER, PipelineConfig, run_pipeline, stage_factories
from perception.pipeline.model_stage import FramePrediction, ModelStage
from perception.pipeline.runner import run_inprocess, synchronized_frames
from perception.sim.scene import LIDAR, SimConfig, SimSequence
from tests.pipeline.conftest import CONFIG as DETECTOR_CONFIG
from tests.pipeline.planning_helpers import (
    CALIB, CAMERAS, FakeDetector, assert_plan, detections, planning_frame, samples, tiny_planner,
)


@pytest.fixture(scope="module")
def planner_files(tmp_path_factory):
    return tiny_planner(tmp_path_factory.mktemp("gf"))


@pytest.fixture(scope="module")
def planner(planner_files) -> ModelStage:
    return ModelStage(*planner_files)


def agent_masks(stage: ModelStage):
    """Record the agent mask the planning head is called with (its 5th input)."""
    seen = []
    stage.model.planner.register_forward_pre_hook(lambda mod, args: seen.append(args[4].clone()))
    return seen


def test_planner_after_detector_gets_its_boxes_as_agent_tokens(planner):
    assert planner.is_planner and planner.model.planner.anchors.abs().sum() > 0  # the anchors came with the weights
    frame = planning_frame(0)
    seen = agent_masks(planner)
    pred = planner(FakeDetector()(frame))
    assert pred.model == "Fake+GaussianFusion" and pred.token == frame.token
    np.testing.assert_array_equal(pred.detections.boxes.tensor, detections().boxes.tensor)  # the detector's boxes
    assert_plan(pred.plan)
    assert pred.plan.missing == () and pred.carried is frame  # carried on (carry=True by default)
    assert seen[-1].tolist() == [[True] * 3 + [False] * 5]  # 3 boxes → 3 of max_agents=8 agent tokens
    alone = planner(frame)  # no detector: no agents, and other candidate scores
    assert alone.detections is None and alone.model == "GaussianFusion"
    assert not seen[-1].any()
    assert not np.array_equal(alone.plan.plan.scores, pred.plan.plan.scores)
    assert pred == replace(pred, carried=None) and "carried" not in repr(pred)  # not compared (same fields), not shown


def test_command_comes_from_the_frame_and_missing_sensors_still_get_a_plan(planner):
    calls = []
    plan = planner.model.plan
    planner.model.plan = lambda frames, commands, detections=None: calls.append(commands) or plan(
        frames, commands, detections)
    try:
        outs = [planner(planning_frame(1, command=0)), planner(planning_frame(2, command=None)),
                planner(planning_frame(3, cameras=("CAM_L0", "CAM_F0"))), planner(planning_frame(4, lidar=False)),
                planner(planning_frame(5, cameras=()))]
    finally:
        del planner.model.plan
    assert calls == [[0], [None], [2], [2], [2]]
    for o in outs:
        assert_plan(o.plan)
    assert [o.plan.missing for o in outs] == [(), (), ("CAM_R0",), ("lidar",), CAMERAS]


def test_chain_misuse_is_an_error(planner):
    frame = planning_frame(0)
    with pytest.raises(TypeError, match="without one"):
        planner(FramePrediction(frame.token, frame.timestamp, "Fake", detections()))  # nothing carried
    with pytest.raises(ValueError, match="replace the earlier plan"):
        planner(planner(frame))


def test_detector_then_planner_in_process_and_on_ray(planner_files, ckpt, ray_local, tmp_path):
    """Two model stages (an untrained BevCenterNet, the tiny planner) in the app's chain, both runners."""
    cfg = PipelineConfig(models=((DETECTOR_CONFIG, ckpt), planner_files), png_every=2)
    factories, names, groups = stage_factories(cfg, CAMERAS)
    assert names[-2:] == ["model:bev_center_sim", "model:gaussian_fusion_tiny"] and groups[-2:] == [[4], [5]]
    assert [f.keywords["carry"] for f in factories[-2:]] == [True, False]  # the last stage sends no frame back
    for workers in (0, 1):
        out = tmp_path / f"w{workers}"
        res = run_pipeline(samples(3), CALIB, "lidar", out, cfg, workers=workers, total=3)
        assert res["errors"] == [] and res["frames_out"] == 3, res
        frames = pd.read_parquet(out / "predictions_frames.parquet")
        assert frames["model"].tolist() == ["BevCenterNet+GaussianFusion"] * 3
        assert frames["has_detections"].all() and frames["has_plan"].all()
        assert [np.asarray(p.tolist()).shape for p in frames["plan_poses"]] == [(8, 3)] * 3
        msgs = res["sinks"]["McapSink"]["messages"]
        assert msgs["/plan"] == msgs["/gaussians"] == msgs["/detections"] == 3
        assert res["sinks"]["PngSink"]["written"] == 2


def test_demo_models_and_the_planner_constant():
    assert DEFAULT_MODELS == (DETECTOR, PLANNER, DEPTH)  # the demo plans after detecting, then adds depth
    assert DEPTH[0].is_file() and DEPTH[1].is_file()
    assert PLANNER[0].is_file() and PLANNER[0].name == "gaussian_fusion_sim_cpu.py"
    assert PLANNER[1].is_file() and PLANNER[1].name == "gaussian_fusion_sim_cpu.safetensors"


def test_sim_frames_carry_the_driving_command_through_the_synchronizer():
    seq = SimSequence(3, SimConfig(frames=2, render_cameras=False))
    truth = list(seq)
    assert [s.frame.meta["driving_command"] for s in truth] == [s.targets.driving_command for s in truth]
    sync, frames = synchronized_frames(truth, seq.calib, LIDAR, with_cameras=False)
    out = []
    run_inprocess([], frames, sink=out.append, progress=False)
    assert [dict(f.meta) for f in out] == [dict(s.frame.meta) for s in truth]
