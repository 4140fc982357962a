"""Centre-distance AP: hand-checked cases of the matching rule and the PR integration."""
from __future__ import annotations

import numpy as np
import pytest

from perception.eval.detection import average_precision, centre_distance_map, match_centres
from perception.structures import Boxes3D, Detections

CLASSES = ("Car", "Pedestrian")


def boxes(xy, labels) -> Boxes3D:
    t = np.zeros((len(xy), 7), np.float32)
    t[:, :2] = np.asarray(xy, np.float32).reshape(-1, 2)
    t[:, 3:6] = (4.0, 2.0, 1.5)
    return Boxes3D(t, np.asarray(labels, np.int64), CLASSES)


def test_perfect_detections_score_one_and_misses_score_less():
    gt = boxes([[10, 0], [20, 5], [5, -3]], [0, 0, 1])
    perfect = Detections(gt, np.array([0.9, 0.8, 0.7]))
    m = centre_distance_map([(perfect, gt)], CLASSES)
    assert m["mAP"] == pytest.approx(1.0) and m["AP_Car"] == pytest.approx(1.0)
    # one car 1.5 m off: matched at 2 m and 4 m, missed at 0.5 m and 1 m -> AP_Car = (0.5 + 0.5 + 1 + 1) / 4
    shifted = boxes([[10, 0], [21.5, 5], [5, -3]], [0, 0, 1])
    m = centre_distance_map([(Detections(shifted, np.array([0.9, 0.8, 0.7])), gt)], CLASSES)
    assert m["AP_Car"] == pytest.approx(0.75) and m["AP_Pedestrian"] == pytest.approx(1.0)
    assert m["mAP_0.5m"] == pytest.approx(0.75) and m["mAP_4m"] == pytest.approx(1.0)


def test_false_positive_ranked_first_halves_precision_at_first_recall():
    gt = boxes([[10, 0]], [0])
    det = Detections(boxes([[30, 30], [10, 0]], [0, 0]), np.array([0.9, 0.5]))
    m = centre_distance_map([(det, gt)], CLASSES)
    assert m["AP_Car"] == pytest.approx(0.5)
    assert "AP_Pedestrian" not in m  # no pedestrian ground truth: left out, not scored 0


def test_wrong_class_never_matches_and_far_boxes_are_ignored():
    gt = boxes([[10, 0], [80, 0]], [0, 0])  # the second is beyond max_distance
    det = Detections(boxes([[10, 0]], [1]), np.array([0.9]))
    m = centre_distance_map([(det, gt)], CLASSES, max_distance=50.0)
    assert m["AP_Car"] == 0.0


def test_greedy_matching_in_score_order():
    matched = match_centres(np.array([[0.0, 0.0], [0.3, 0.0]]), np.array([0.2, 0.9]), np.array([[0.2, 0.0]]), 0.5)
    assert matched.tolist() == [False, True]  # the higher score takes the only ground truth
    assert np.isnan(average_precision(np.zeros(0), np.zeros(0, bool), 0))
