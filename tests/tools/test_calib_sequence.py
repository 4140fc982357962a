"""tools/calib_sequence.py: CalibFormer calibrating whole held-out rigs, as tools/calibrate.py does."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from perception.models.calibformer.align import CalibAligned
from perception.models.calibformer.data import CalibSimDataset
from perception.models.calibformer.model import CalibFormer
from tests.models.test_calibformer_align import TINY, truth_maps
from tools.calib_sequence import evaluate, rigs, spread_check


@pytest.fixture(scope="module")
def samples():
    """Two frames of one sequence x 3 pinholes on a jittered rig, with intensities: 3 rigs of 2 frames."""
    ds = CalibSimDataset(seeds=[7], frames=2, size=(64, 32), max_points=4000, fixed_seed=0, mount_jitter=(10.0, 0.25),
                         intensity=True)
    return [ds[i] for i in range(len(ds))]


def test_rigs_group_a_sequences_frames_by_camera(samples):
    found = rigs(samples)
    assert list(found) == [("sim00007", "CAM_L0"), ("sim00007", "CAM_F0"), ("sim00007", "CAM_R0")]
    assert all(len(v) == 2 for v in found.values())
    assert [s.inputs.token for s in found[("sim00007", "CAM_F0")]] == ["sim00007_0000/CAM_F0", "sim00007_0001/CAM_F0"]
    with pytest.raises(ValueError, match="true extrinsic"):  # two cameras' pairs under one name
        rigs([samples[0], replace(samples[1], inputs=replace(samples[1].inputs, token=samples[0].inputs.token))])
    with pytest.raises(ValueError, match="sequence"):
        rigs([replace(samples[0], inputs=replace(samples[0].inputs, token="frame0"))])


def test_a_model_that_corrects_nothing_scores_the_start_everywhere(samples):
    model = CalibFormer(**{**TINY, "intensity": False}).eval()  # untrained: the identity correction
    out = evaluate(model, samples, draws=2)
    assert out["rigs"] == 3 and out["estimates"] == 6 and out["refused"] is None
    assert out["initial"]["rot_geodesic_deg_mean"] > 1.0 and out["initial"]["trans_norm_cm_mean"] > 2.0
    for name in ("per_frame", "median", "sequence"):
        np.testing.assert_allclose(list(out[name].values()), list(out["initial"].values()), atol=2e-3)
    assert out["spread"]["rigs"] == 6  # every frame's correction the same: the frames' median has no spread
    np.testing.assert_allclose(list(out["spread"]["spread"].values()), 0, atol=1e-9)


def test_the_joint_alignment_improves_on_the_median_with_perfect_maps(samples, tmp_path):
    ckpt = tmp_path / "net.pth"
    torch.save({"state_dict": CalibFormer(**TINY).state_dict()}, ckpt)
    model = CalibAligned(dict(TINY), init_from=str(ckpt), widths=(8, 16, 16, 16)).eval()
    perfect = {s.inputs.image.numpy().tobytes(): truth_maps(s)[0].float() for s in samples}
    model.maps = lambda image: torch.stack([perfect[im.numpy().tobytes()] for im in image])  # what a perfect net sees
    model.predict = lambda batch, iterations=None: CalibFormer.predict(model.network, batch, iterations)  # frames: the network alone
    out = evaluate(model, samples, draws=2, max_deg=2.0, max_m=0.05)
    assert out["refused"] == 0
    np.testing.assert_allclose(out["median"]["rot_geodesic_deg_mean"], out["initial"]["rot_geodesic_deg_mean"], atol=2e-3)
    assert out["sequence"]["rot_geodesic_deg_mean"] < 0.4 * out["median"]["rot_geodesic_deg_mean"]
    assert out["spread"]["rigs"] == 6 and all(0 <= v <= 1 for v in out["spread"]["within_2"].values())


def test_spread_check_compares_each_axis_error_with_its_spread():
    truth = np.stack([np.eye(4)] * 4)
    est = truth.copy()
    est[:, :3, 3] = np.array([[0.01, 0, 0], [0.03, 0, 0], [0, 0.02, 0], [0, 0, -0.05]])  # 1, 3 cm along x; 2 y; 5 z
    est[0, :3, :3] = Rotation.from_euler("y", 0.5, degrees=True).as_matrix()  # yaw 0.5 deg on the first
    # the third rig's forward offset unconstrained; the last rig reported no spread
    spread = [np.array([0.1, 0.1, 0.1, 2.0, 1.0, 1.0])] * 2 + [np.array([0.1, 0.1, 0.1, 2.0, 1.0, np.inf]), None]
    out = spread_check(est, truth, spread)
    near = lambda x: pytest.approx(x, abs=1e-3)  # noqa: E731 (the report rounds to 1e-3)
    assert out["rigs"] == 3
    assert out["error"]["trans_cm_x"] == near(4 / 3) and out["error"]["rot_deg_y"] == near(0.5 / 3)
    assert out["median_ratio"]["trans_cm_x"] == near(0.5)  # ratios 0.5, 1.5, 0
    assert out["within_1"]["trans_cm_x"] == near(2 / 3) and out["within_2"]["trans_cm_x"] == 1.0
    assert out["within_2"]["rot_deg_y"] == near(2 / 3)  # 0.5 deg is 5 spreads
    assert out["within_1"]["trans_cm_y"] == near(2 / 3)  # 2 cm is 2 spreads: not within 2 either
    assert out["within_2"]["trans_cm_y"] == near(2 / 3)
    assert out["spread"]["trans_cm_x"] == 2.0 and out["spread"]["trans_cm_z"] == 1.0  # the median: robust to an inf
    assert out["unconstrained"]["trans_cm_z"] == 1 and out["unconstrained"]["trans_cm_x"] == 0
    assert spread_check(est, truth, [None] * 4) is None
