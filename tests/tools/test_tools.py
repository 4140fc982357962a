"""The command-line tools run end to end."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import needs_data
from tools import browse_dataset, collect_env, demo


def test_collect_env_reports_stack_and_mmcv_ops(capsys):
    rows = dict(collect_env.collect())
    for name in ("torch", "spconv", "mmcv", "mmdet3d", "numba", "open3d", "ray", "CPU count", "CUDA available"):
        assert name in rows
    assert rows["mmcv ops"].startswith("yes"), rows["mmcv ops"]
    assert collect_env.main() == 0
    assert "mmdet3d" in capsys.readouterr().out


@needs_data
@pytest.mark.data
def test_browse_kitti_writes_bev_and_camera_pngs(data_root, tmp_path):
    assert browse_dataset.main(["--source", "kitti", "--root", str(data_root / "kitti"), "--out", str(tmp_path), "--frames", "2"]) == 0
    cam = np.asarray(Image.open(tmp_path / "000001_CAM2.png"))
    bev = np.asarray(Image.open(tmp_path / "000001_bev.png"))
    raw = np.asarray(Image.open(data_root / "kitti/training/image_2/000001.png").convert("RGB"))
    assert cam.shape == raw.shape and (cam != raw).any(axis=2).mean() > 0.05  # points and boxes drawn
    assert bev.shape == (1200, 800, 3)  # 120 m x 80 m at 0.1 m
    assert (bev.reshape(-1, 3) != 16).any(axis=1).mean() > 0.01


@needs_data
@pytest.mark.data
def test_demo_summarises_every_present_source(data_root, tmp_path):
    assert demo.main(["--data", str(data_root), "--out", str(tmp_path), "--frames", "1", "--sim-frames", "3",
                      "--workers", "0", "--browse", "kitti", "kitti360"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sources"]["kitti"]["frames"] == 1 and summary["sources"]["kitti"]["boxes"] == 1
    assert summary["sources"]["kitti360"]["missing_sensors"] == {"image_02": 1, "image_03": 1}


def test_demo_streams_the_synthetic_world_through_the_pipeline(tmp_path):
    """The default demo path (Ray actors) on a short synthetic drive: every stage has latency, sinks wrote."""
    out = tmp_path / "o"
    assert demo.main(["--data", str(tmp_path / "nowhere"), "--out", str(out), "--sim-frames", "6",
                      "--browse", "kitti"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    p = summary["pipeline"]
    assert p["mode"] == "ray" and p["frames_in"] == p["frames_out"] == 6 and not p["errors"]
    names = [s["name"] for s in p["stages"]]
    assert names == ["source", "lidar_preprocess", "camera:CAM_L0", "camera:CAM_F0", "camera:CAM_R0",
                     "camera:FISHEYE_FRONT", "camera:FISHEYE_LEFT", "camera:FISHEYE_REAR", "camera:FISHEYE_RIGHT",
                     "model:msf_sim_cpu", "model:gaussian_fusion_sim_cpu", "model:pfdepth_sim_cpu"]
    assert all(s["calls"] == 6 and s["latency_ms_p50"] > 0 for s in p["stages"])
    assert p["sync"]["frames"] and p["sinks"]["PredictionTable"]["frames"] == 6
    assert p["sinks"]["McapSink"]["messages"]["/lidar"] == 6
    assert p["sinks"]["McapSink"]["messages"]["/detections"] == 6  # MSF's boxes, one message per frame
    assert p["sinks"]["McapSink"]["messages"]["/plan"] == 6  # GaussianFusion's plan after them
    assert p["sinks"]["McapSink"]["messages"]["/gaussians"] == 6
    assert p["sinks"]["McapSink"]["messages"]["/depth/CAM_F0"] == 6  # PFDepth's depth, last in the chain
    assert p["sinks"]["PredictionTable"]["plans"] == 6
    assert p["sinks"]["PredictionTable"]["boxes"] > 0
    assert (out / "pipeline" / "demo.mcap").is_file() and (out / "pipeline" / "png" / "sim00000_0000.png").is_file()
    assert "not present" in summary["sources"]["kitti"]["skipped"]
