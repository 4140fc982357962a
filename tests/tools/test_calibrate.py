"""tools/calibrate.py: extrinsic files, sources, and a run on the real KITTI-360 frames."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from perception.data.common import DataError
from tests.conftest import needs_data
from tools import calibrate


def test_read_extrinsic_text_and_npy(tmp_path):
    m = np.eye(4)
    m[:3, 3] = [0.1, 0.2, 0.3]
    (tmp_path / "t.txt").write_text("\n".join(" ".join(map(str, r)) for r in m[:3]))  # 3x4
    np.save(tmp_path / "t.npy", m)
    np.testing.assert_array_equal(calibrate.read_extrinsic(tmp_path / "t.txt"), m)
    np.testing.assert_array_equal(calibrate.read_extrinsic(tmp_path / "t.npy"), m)
    (tmp_path / "bad.txt").write_text("1 0 0\n0 1 0")
    with pytest.raises(DataError, match="12 or 16 numbers"):
        calibrate.read_extrinsic(tmp_path / "bad.txt")
    (tmp_path / "skew.txt").write_text("1 1 0 0 0 1 0 0 0 0 1 0")
    with pytest.raises(DataError, match="orthonormal"):
        calibrate.read_extrinsic(tmp_path / "skew.txt")


def test_missing_root_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        calibrate.main(["--source", "kitti360", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


@needs_data
@pytest.mark.data
def test_calibrate_kitti360_from_a_known_perturbation(data_root, tmp_path):
    out = tmp_path / "calib"
    assert calibrate.main(["--source", "kitti360", "--root", str(data_root / "kitti360"), "--perturb", "10", "0.25",
                           "--frames", "2", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["camera"] == "image_00" and rep["frames"] == ["0000003000", "0000003001"]
    assert 0 < rep["before"]["rot_geodesic_deg"] < 10 * np.sqrt(3) and rep["before"]["trans_norm_cm"] > 0
    assert np.isfinite(rep["after"]["rot_geodesic_deg"]) and np.isfinite(rep["after"]["trans_norm_cm"])
    assert rep["joint_alignment"].startswith("none")  # the released network alone: the frames' median
    assert rep["deskewed"].startswith("0 of 2")  # KITTI-360's sweeps carry no per-point times: as measured
    spread = rep["spread"]  # the standard error of the two frames' median, per camera axis
    assert "median" in spread["what"] and set(spread["rot_deg"]) == set(spread["trans_cm"]) == {"x", "y", "z"}
    assert all(v is not None and v >= 0 for d in (spread["rot_deg"], spread["trans_cm"]) for v in d.values())
    est = np.loadtxt(out / "extrinsic.txt")
    np.testing.assert_allclose(est, rep["estimate"], atol=1e-8)
    raw = np.asarray(Image.open(data_root / "kitti360/image_00/0000003000.png").convert("RGB"))
    for name in ("before", "after", "reference"):
        img = np.asarray(Image.open(out / f"overlay_{name}_0000003000.png"))
        assert img.shape == raw.shape and (img != raw).any(axis=2).mean() > 0.02  # points drawn


@needs_data
@pytest.mark.data
def test_parallax_needs_poses_that_kitti360_does_not_give(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        calibrate.main(["--source", "kitti360", "--root", str(data_root / "kitti360"), "--frames", "3", "--parallax",
                        "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "needs the car's pose at every frame; 0 of 3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@needs_data
@pytest.mark.data
def test_calibrate_with_an_aligned_model_aligns_the_median_over_the_frames(data_root, tmp_path):
    """The aligned config (the released network + an appearance net, here untrained) through the same tool."""
    import torch
    from mmengine.config import Config

    from perception.models.calibformer.calibrate import ROOT

    config = ROOT / "configs/calibformer/calibformer_align_jitter_sim_cpu.py"
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = cfg.model.type(**{k: v for k, v in cfg.model.items() if k != "type"})
    torch.save({"state_dict": model.state_dict()}, tmp_path / "aligned.pth")
    out = tmp_path / "calib"
    assert calibrate.main(["--source", "kitti360", "--root", str(data_root / "kitti360"), "--perturb", "2", "0.05",
                           "--frames", "2", "--config", str(config), "--checkpoint", str(tmp_path / "aligned.pth"),
                           "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["joint_alignment"] in ("taken", "refused (the frames' median kept)")
    assert ("sandwich" if rep["joint_alignment"] == "taken" else "median") in rep["spread"]["what"]
    assert all(v is None or v >= 0 for d in (rep["spread"]["rot_deg"], rep["spread"]["trans_cm"]) for v in d.values())
    np.testing.assert_allclose(np.loadtxt(out / "extrinsic.txt"), rep["estimate"], atol=1e-8)
    assert np.isfinite(rep["after"]["rot_geodesic_deg"]) and np.isfinite(rep["after"]["trans_norm_cm"])


@needs_data
@pytest.mark.data
def test_calibrate_a_ros_bag_written_from_kitti360(data_root, tmp_path):
    """KITTI-360 frames (LiDAR + image_00) written as a ROS1 bag, calibrated through the ROS-bag reader."""
    from dataclasses import replace

    from perception.data.kitti360 import Kitti360Reader
    from perception.data.rosbag_export import write_recording
    from perception.structures import Calibration, Sample

    reader = Kitti360Reader(data_root / "kitti360")
    full = reader.calib
    keep = ("velodyne", "image_00")
    calib = Calibration({k: full.ego_from_sensor[k] for k in keep}, {"image_00": full.cameras["image_00"]})
    samples = [Sample(replace(reader.load(i).frame, calib=calib, missing=())) for i in range(2)]
    bag = write_recording(samples, calib, tmp_path / "k360.bag", "ros1")
    out = tmp_path / "calib"
    assert calibrate.main(["--source", "bag", "--root", str(bag), "--perturb", "10", "0.25", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["frames"]) == 2 and rep["before"]["rot_geodesic_deg"] > 0
    # the bag's rig is the reader's: the reference extrinsic is KITTI-360's
    np.testing.assert_allclose(rep["reference"], calib.transform(rep["camera"], rep["lidar"]).matrix, atol=1e-5)
