"""Depth metrics against values worked out by hand."""
import math

import numpy as np
import pytest

from perception.eval.depth import DepthAccumulator, DepthCaps, DepthMetric, depth_metrics
from perception.structures import DepthMap, Sample
from perception.structures.depth import DepthOutput


def test_hand_checked_values():
    gt = np.array([[2.0, 4.0], [10.0, 0.0]])      # the 0 is "no depth": not scored
    pred = np.array([[2.0, 5.0], [8.0, 3.0]])
    m = depth_metrics(pred, gt)
    # |d-g|/g: 0, 0.25, 0.2 -> mean 0.15; (d-g)^2/g: 0, 0.25, 0.4 -> 0.65/3; (d-g)^2: 0, 1, 4 -> rmse sqrt(5/3)
    assert m["abs_rel"] == pytest.approx(0.15)
    assert m["sq_rel"] == pytest.approx(0.65 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.25) ** 2 + math.log(0.8) ** 2) / 3))
    # ratios 1, 1.25, 1.25: 1.25 is not < 1.25
    assert m["a1"] == pytest.approx(1 / 3)
    assert m["a2"] == pytest.approx(1.0) and m["a3"] == pytest.approx(1.0)


def test_caps_mask_and_clamp():
    gt = np.array([1.0, 50.0, 100.0])
    pred = np.array([1.0, 200.0, 100.0])
    m = depth_metrics(pred, gt, DepthCaps(max_depth=80.0))   # gt 100 not scored; pred 200 clamped to 80
    assert m["abs_rel"] == pytest.approx((0 + 30 / 50) / 2)
    m = depth_metrics(pred, gt, DepthCaps(max_depth=80.0), mask=np.array([True, False, True]))
    assert m["abs_rel"] == pytest.approx(0.0)
    assert math.isnan(depth_metrics(pred, np.zeros(3))["abs_rel"])   # nothing valid: NaN, not 0


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="min_depth"):
        DepthCaps(5.0, 1.0)
    # a NaN prediction on a valid pixel is left out of the sums
    assert depth_metrics(np.array([np.nan, 2.0]), np.array([1.0, 2.0]))["abs_rel"] == 0.0


def test_accumulator_is_pixel_weighted_per_view_type():
    acc = DepthAccumulator()
    acc.add("pinhole", np.array([2.0]), np.array([1.0]))              # abs_rel 1
    acc.add("pinhole", np.full(3, 1.0), np.full(3, 1.0))              # abs_rel 0 over 3 pixels
    acc.add("fisheye", np.array([1.5]), np.array([1.0]))
    acc.add("fisheye", np.array([1.0]), np.array([0.0]))              # no valid pixel: counted as empty
    r = acc.results()
    assert r["pinhole/abs_rel"] == pytest.approx(0.25) and r["pinhole/pixels"] == 4
    assert r["fisheye/abs_rel"] == pytest.approx(0.5) and acc.empty == {"fisheye": 1}
    assert r["all/abs_rel"] == pytest.approx(1.5 / 5)


def test_metric_scores_model_and_baseline():
    from perception.structures import Boxes3D, Calibration, Frame, Targets

    gt = np.array([[2.0, 4.0]], np.float32)
    sample = Sample(Frame("t0", 0.0, Calibration({}, {})),
                    Targets(Boxes3D.empty(("Car",)), depth={"CAM": DepthMap(gt, "CAM", 0.0)}))
    out = DepthOutput({"CAM": DepthMap(np.array([[2.0, 5.0]], np.float32), "CAM", 0.0)}, (),
                      {"CAM": DepthMap(np.array([[4.0, 4.0]], np.float32), "CAM", 0.0)}, {"CAM": "pinhole"})
    metric = DepthMetric()
    metric.process([sample], [out])
    assert len(metric.results) == 1            # one result per sample (mmengine cuts to the dataset length)
    r = metric.compute_metrics(metric.results)
    assert r["pinhole/abs_rel"] == pytest.approx(0.125)
    assert r["baseline/pinhole/abs_rel"] == pytest.approx(0.5)
