"""Waymo AP/APH: hand-checked matching, difficulty and PR-integration cases."""
from __future__ import annotations

import numpy as np
import pytest

from perception.eval.waymo import (
    WaymoAP, heading_accuracy, hungarian_match, iou_3d, waymo_ap, waymo_average_precision,
)
from perception.geometry.se3 import SE3
from perception.structures import (
    Boxes3D, Calibration, Detections, Frame, PointCloud, Sample, Targets,
)

NAMES = ("Car", "Pedestrian", "Cyclist")
CAR = (4.0, 2.0, 1.5)
MANY = 100  # LiDAR points: a LEVEL_1 box


def boxes(rows, label: int = 0) -> Boxes3D:
    t = np.asarray(rows, np.float32).reshape(-1, 7)
    return Boxes3D(t, np.full(len(t), label), NAMES)


def car(x: float, y: float = 0.0, yaw: float = 0.0, dims=CAR) -> list[float]:
    return [x, y, 0.0, *dims, yaw]


def ap(pred_rows, scores, gt_rows, points, **kw) -> dict[str, float]:
    det = Detections(boxes(pred_rows), np.asarray(scores, np.float32))
    return waymo_ap([(det, boxes(gt_rows), np.asarray(points))], **kw)


def test_perfect_predictions_score_one():
    gt = Boxes3D(np.array([car(10), car(20, 5), [5, -3, 0, 0.8, 0.8, 1.8, 0.3]], np.float32), [0, 0, 1], NAMES)
    m = waymo_ap([(Detections(gt, np.array([0.9, 0.8, 0.7])), gt, np.array([MANY] * 3))])
    for key in ("Vehicle/L1_AP", "Vehicle/L1_APH", "Vehicle/L2_AP", "Pedestrian/L2_APH", "mAP_L1", "mAPH_L2"):
        assert m[key] == pytest.approx(1.0), key
    assert "Cyclist/L1_AP" not in m  # no cyclist ground truth: left out, not scored 0


def test_heading_off_by_half_pi_halves_aph_only():
    square = (2.0, 2.0, 1.5)  # a square footprint: turning it by pi/2 keeps IoU = 1
    m = ap([car(10, yaw=0.3 + np.pi / 2, dims=square)], [0.9], [car(10, yaw=0.3, dims=square)], [MANY])
    # one TP with heading accuracy 1 - (pi/2)/pi = 0.5: P = 1, P_H = 0.5 at R = 1
    assert m["Vehicle/L1_AP"] == pytest.approx(1.0)
    assert m["Vehicle/L1_APH"] == pytest.approx(0.5, abs=1e-6)
    assert heading_accuracy(np.array([np.pi, -1.5 * np.pi, 2 * np.pi - 0.1]), np.zeros(3)) == pytest.approx(
        [0.0, 0.5, 1 - 0.1 / np.pi])


def test_false_positive_ranked_above_true_positive():
    # One GT; FP at score 0.9, TP at 0.5. Cutoffs <= 0.5: TP 1, FP 1 -> (R 1, P 0.5); cutoffs in (0.5, 0.9]: only
    # the FP -> R 0, P set to 1; above 0.9: nothing -> R 0, P 1. Envelope from R = 1 down: 0.5, with points
    # inserted every 0.05 carrying 0.5; the R = 0 point takes its neighbour's 0.5. Area = 0.5 * 1 = 0.5.
    m = ap([car(30, 30), car(10)], [0.9, 0.5], [car(10)], [MANY])
    assert m["Vehicle/L1_AP"] == pytest.approx(0.5, abs=1e-6)
    # Two GTs; TP 0.9, FP 0.8, TP 0.7 -> PR points (R .5, P 1), (R .5, P .5), (R 1, P 2/3), (R 0, P 1).
    # Best P per recall: {0: 1, .5: 1, 1: 2/3}. From R = 1: 2/3 at 1, .95, ..., .55 (inserted), then envelope 1 at
    # .5, .45, ..., 0. Trapezoids: 2/3 * .45 over [.55, 1] + (1 + 2/3) / 2 * .05 over [.5, .55] + 1 * .5 over
    # [0, .5] = 0.3 + 0.041667 + 0.5 = 0.841667 (VOC's all-point rule would give 0.833333).
    m = ap([car(0), car(30, 30), car(10)], [0.9, 0.8, 0.7], [car(0), car(10)], [MANY, MANY])
    assert m["Vehicle/L1_AP"] == pytest.approx(0.3 + 5 / 120 + 0.5, abs=1e-6)
    assert waymo_average_precision([1.0, 0.5], [0.0, 0.0]) == 0.0  # nothing recalled


def test_iou_just_under_threshold_does_not_match():
    # boxes 2 m long, 1 m wide and tall, shifted by d along x: IoU = (2 - d) / (2 + d); 0.7 at d = 0.353
    under, over = [0.36, 0, 0, 2, 1, 1, 0], [0.34, 0, 0, 2, 1, 1, 0]
    gt = [[0, 0, 0, 2, 1, 1, 0]]
    assert iou_3d(np.array([under, over]), np.array(gt))[:, 0] == pytest.approx([1.64 / 2.36, 1.66 / 2.34], abs=1e-5)
    assert ap([under], [0.9], gt, [MANY])["Vehicle/L1_AP"] == 0.0  # IoU 0.6949 < 0.7: an FP and an FN
    assert ap([over], [0.9], gt, [MANY])["Vehicle/L1_AP"] == pytest.approx(1.0)  # IoU 0.7094
    # the threshold is per class and configurable: at 0.6 the first one matches
    assert ap([under], [0.9], gt, [MANY], iou_thresholds={"Vehicle": 0.6})["Vehicle/L1_AP"] == pytest.approx(1.0)


def test_hungarian_matching_beats_greedy():
    # 2 m long boxes on the x axis: G1 [-1, 1], G2 [0.2, 2.2]; P1 [-0.5, 1.5] (score 0.9), P2 [-1.4, 0.6] (0.8).
    # IoU(P1, G1) = 1.5/2.5 = 0.6, IoU(P1, G2) = 1.3/2.7 = 0.481, IoU(P2, G1) = 1.6/2.4 = 0.667, IoU(P2, G2) = 0.111.
    # Greedy by score (threshold 0.4): P1 takes G1 (0.6 > 0.481), P2 is left with G2 (0.111): 1 TP + 1 FP, AP 0.5.
    # Hungarian maximises the summed IoU: P1-G2 + P2-G1 = 1.148 > 0.6: 2 TPs, AP 1.
    dims = (2.0, 1.0, 1.0)
    gt = [car(0, dims=dims), car(1.2, dims=dims)]
    pred = [car(0.5, dims=dims), car(-0.4, dims=dims)]
    iou = iou_3d(np.array(pred), np.array(gt))
    assert iou == pytest.approx(np.array([[0.6, 1.3 / 2.7], [1.6 / 2.4, 0.4 / 3.6]]), abs=1e-5)
    assert hungarian_match(iou, 0.4).tolist() == [1, 0]
    assert hungarian_match(iou, 0.62).tolist() == [-1, 0]  # pairs under the threshold never match
    m = ap(pred, [0.9, 0.8], gt, [MANY, MANY], iou_thresholds={"Vehicle": 0.4})
    assert m["Vehicle/L1_AP"] == pytest.approx(1.0)


def test_level_2_box_counts_at_l2_only():
    gt, pts = [car(10), car(30)], [MANY, 3]  # the second box has 3 points: LEVEL_2
    both = ap(gt, [0.9, 0.8], gt, pts)
    # the prediction on the LEVEL_2 box is a TP at L1 too (Waymo's IsTP), never an FP: everything is 1
    assert both["Vehicle/L1_AP"] == pytest.approx(1.0) and both["Vehicle/L2_AP"] == pytest.approx(1.0)
    first = ap([car(10)], [0.9], gt, pts)
    # L1: the missed LEVEL_2 box is no FN -> R 1, AP 1; L2: R 0.5 at P 1 -> AP 0.5
    assert first["Vehicle/L1_AP"] == pytest.approx(1.0) and first["Vehicle/L2_AP"] == pytest.approx(0.5, abs=1e-6)
    second = ap([car(30)], [0.9], gt, pts)
    # L1: TP on the LEVEL_2 box, FN on the LEVEL_1 one -> R 0.5, P 1 -> 0.5 (likewise at L2)
    assert second["Vehicle/L1_AP"] == pytest.approx(0.5, abs=1e-6)
    assert second["Vehicle/L2_AP"] == pytest.approx(0.5, abs=1e-6)


def test_empty_ground_truth_is_ignored():
    gt, pts = [car(10), car(30)], [MANY, 0]  # the second box has no LiDAR point
    both = ap([car(30), car(10)], [0.9, 0.5], gt, pts)
    # the prediction on the empty box is neither TP nor FP; the empty box is no FN
    assert both["Vehicle/L1_AP"] == pytest.approx(1.0) and both["Vehicle/L2_AP"] == pytest.approx(1.0)
    # Waymo's command-line tool drops empty boxes instead: that prediction becomes an FP ranked first -> 0.5
    dropped = ap([car(30), car(10)], [0.9, 0.5], gt, pts, empty_gt="drop")
    assert dropped["Vehicle/L2_AP"] == pytest.approx(0.5, abs=1e-6)
    assert ap([car(10)], [0.9], gt, pts)["Vehicle/L2_AP"] == pytest.approx(1.0)
    assert ap([car(30)], [0.9], [car(30)], [0]) == {"mAP_L1": 0.0, "mAPH_L1": 0.0, "mAP_L2": 0.0, "mAPH_L2": 0.0}


def test_metric_counts_points_per_frame_and_matches_within_frames():
    calib = Calibration({"lidar": SE3.identity()})
    gt = boxes([car(10), car(30)])
    # 10 points in the first box, 3 in the second -> LEVEL_1 and LEVEL_2
    pts = np.concatenate([np.c_[np.linspace(9, 11, 10), np.zeros(10), np.full(10, 0.5)],
                          np.c_[np.linspace(29.5, 30.5, 3), np.zeros(3), np.full(3, 0.5)]]).astype(np.float32)
    frame = Frame("a", 0.0, calib, lidar={"lidar": PointCloud(pts, ("x", "y", "z"), 0.0, "lidar")})
    empty = Frame("b", 0.1, calib, lidar={"lidar": PointCloud(np.zeros((0, 3)), ("x", "y", "z"), 0.1, "lidar")})
    metric = WaymoAP()
    metric.process([Sample(frame, Targets(gt)), Sample(empty, Targets(Boxes3D.empty(NAMES)))],
                   [Detections(boxes([car(10)]), [0.9]), Detections(boxes([car(30)]), [0.8])])
    m = metric.compute_metrics(metric.results)
    # the frame-b prediction cannot match frame a's LEVEL_2 box: L1 has TP 1 then FP 1 -> 1; L2 R 0.5 -> 0.5
    assert m["Vehicle/L1_AP"] == pytest.approx(1.0)
    assert m["Vehicle/L2_AP"] == pytest.approx(0.5, abs=1e-6)
    # the attribute, when a reader gives it, wins over counting
    metric = WaymoAP()
    metric.process([Sample(frame, Targets(gt, attributes={"num_lidar_pts": np.array([3, 3])}))],
                   [Detections(boxes([car(10)]), [0.9])])
    m = metric.compute_metrics(metric.results)
    # both boxes LEVEL_2: L2 R 0.5 -> 0.5; L1 has no FN and one TP -> R 1 -> 1 (Waymo counts it, see IsTP)
    assert m["Vehicle/L2_AP"] == pytest.approx(0.5, abs=1e-6) and m["Vehicle/L1_AP"] == pytest.approx(1.0)


def test_xy_range_leaves_out_what_the_model_cannot_see():
    calib = Calibration({"lidar": SE3.identity()})
    frame = Frame("a", 0.0, calib, lidar={"lidar": PointCloud(np.zeros((0, 3)), ("x", "y", "z"), 0.0, "lidar")})
    sample = Sample(frame, Targets(boxes([car(10), car(60)]), attributes={"num_lidar_pts": np.array([50, 50])}))
    dets = [Detections(boxes([car(10), car(-70)]), [0.9, 0.95])]  # one hit, one FP beyond the range
    whole = WaymoAP()
    whole.process([sample], dets)
    # everything: the far FP ranks first, the far box is missed -> R 0.5 reached at P 0.5
    assert whole.compute_metrics(whole.results)["Vehicle/L1_AP"] < 0.5
    near = WaymoAP(xy_range=(-40, -40, 40, 40))
    near.process([sample], dets)
    assert near.compute_metrics(near.results)["Vehicle/L1_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="xy_range"):
        WaymoAP(xy_range=(40, -40, -40, 40))
