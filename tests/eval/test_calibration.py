"""Calibration error metrics on hand-built extrinsics."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception.eval.calibration import before_after, calibration_errors, summarize


def extrinsic(rotvec_deg=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(rotvec_deg, degrees=True).as_matrix()
    m[:3, 3] = t
    return m


# a forward-looking camera on a LiDAR (x forward, y left, z up): camera x = -y_lidar, y = -z, z = x
GT = np.eye(4)
GT[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
GT[:3, 3] = [0.06, -0.08, -0.27]


def test_pure_yaw_of_one_degree():
    # 1 deg about the vertical (the camera's y axis, pointing down) applied to the true extrinsic
    est = extrinsic((0.0, 1.0, 0.0)) @ GT
    est[:3, 3] = GT[:3, 3]  # rotation of the LiDAR about its own origin: translation unchanged
    e = calibration_errors(est, GT)
    assert e["rot_geodesic_deg"][0] == pytest.approx(1.0, abs=1e-9)
    assert e["rot_yaw_deg"][0] == pytest.approx(1.0, abs=1e-9)
    assert e["rot_pitch_deg"][0] == pytest.approx(0.0, abs=1e-9)
    assert e["rot_roll_deg"][0] == pytest.approx(0.0, abs=1e-9)
    assert e["trans_norm_cm"][0] == pytest.approx(0.0, abs=1e-9)


def test_pure_pitch_and_roll_land_on_their_axes():
    e = calibration_errors(np.stack([extrinsic((2.0, 0, 0)) @ GT, extrinsic((0, 0, -3.0)) @ GT]), GT)
    assert e["rot_pitch_deg"] == pytest.approx([2.0, 0.0], abs=1e-9)
    assert e["rot_roll_deg"] == pytest.approx([0.0, 3.0], abs=1e-9)
    assert e["rot_geodesic_deg"] == pytest.approx([2.0, 3.0], abs=1e-9)


def test_translation_per_axis_and_norm_in_cm():
    est = GT.copy()
    est[:3, 3] += [0.03, -0.04, 0.0]
    e = calibration_errors(est, GT)
    assert [e["trans_x_cm"][0], e["trans_y_cm"][0], e["trans_z_cm"][0]] == pytest.approx([3.0, 4.0, 0.0])
    assert e["trans_norm_cm"][0] == pytest.approx(5.0)
    assert e["rot_geodesic_deg"][0] == pytest.approx(0.0, abs=1e-6)


def test_summaries_and_reduction():
    gt = np.stack([GT, GT])
    init = np.stack([extrinsic((0, 10.0, 0)) @ GT, extrinsic((0, 0, 6.0)) @ GT])
    est = np.stack([extrinsic((0, 1.0, 0)) @ GT, extrinsic((0, 0, 1.0)) @ GT])
    s = summarize(calibration_errors(est, gt))
    assert s["rot_geodesic_deg_mean"] == pytest.approx(1.0)
    assert s["rot_geodesic_deg_median"] == pytest.approx(1.0)
    assert s["rot_geodesic_deg_std"] == pytest.approx(0.0, abs=1e-9)
    assert s["rot_axis_mean_deg"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)  # yaw 1 / 0, roll 0 / 1
    r = before_after(init, est, gt)
    assert r["init/rot_geodesic_deg_mean"] == pytest.approx(8.0)
    assert r["rot_reduction"] == pytest.approx(8.0)


def test_bad_shapes_and_nan_are_errors():
    with pytest.raises(ValueError, match=r"est must be \[4, 4\]"):
        calibration_errors(np.eye(3), GT)
    bad = GT.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        calibration_errors(bad, GT)
    with pytest.raises(ValueError, match="2 estimates but 3"):
        calibration_errors(np.stack([GT, GT]), np.stack([GT, GT, GT]))


def test_identical_extrinsics_give_zero_error_even_when_nearly_orthonormal():
    gt = GT.copy()
    gt[:3, :3] += 1e-7 * np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # a real calibration's small defect
    e = calibration_errors(gt, gt)
    assert e["rot_geodesic_deg"][0] < 1e-6 and e["trans_norm_cm"][0] == 0.0


def test_metric_reports_before_after_iterations_and_refused_alignments():
    from perception.eval.calibration import CalibrationMetric
    from perception.models.calibformer.data import CalibTarget
    from perception.models.calibformer.model import CalibPrediction

    class Pair:  # what the metric reads of a batch's sample: its token and truth
        def __init__(self, token, truth):
            self.inputs, self.target = type("Inputs", (), {"token": token})(), CalibTarget(truth)

    truth = np.eye(4)
    steps = np.stack([extrinsic((0, 2, 0)), extrinsic((0, 1, 0)), truth])  # start 2 deg off, 1 deg after the network, 0 after the alignment
    for aligned, refused in ((None, None), (True, 0.0), (False, 1.0)):
        metric = CalibrationMetric()
        metric.process([Pair("a", truth)], [CalibPrediction("a", steps[-1], steps[0], steps, aligned)])
        out = metric.compute_metrics(metric.results)
        assert out["init/rot_geodesic_deg_mean"] == pytest.approx(2.0)
        assert out["rot_geodesic_deg_mean"] == pytest.approx(0.0, abs=1e-6)
        assert out["iter1/rot_geodesic_deg_mean"] == pytest.approx(1.0)
        assert out.get("align_refused") == refused
    metric = CalibrationMetric()
    with pytest.raises(ValueError, match="no true extrinsic"):
        metric.process([type("S", (), {"inputs": Pair("b", truth).inputs, "target": None})()],
                       [CalibPrediction("b", truth, truth, steps[:1])])
