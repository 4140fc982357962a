"""BEV centre-distance AP for 3D detection (the nuScenes detection matching rule).

Caesar et al., "nuScenes: A multimodal dataset for autonomous driving" (CVPR 2020), Sec. 4: a
prediction matches the closest unmatched ground-truth box of its class whose BEV centre lies within
a distance threshold, predictions taken in descending score; AP per class and threshold, averaged
over the thresholds {0.5, 1, 2, 4} m, then over classes. Unlike nuScenes we integrate the full
precision-recall curve (all-point interpolation, as VOC) without nuScenes' 10 % recall/precision
floor, so AP is 1 for perfect detections and falls smoothly to 0.

Ground truth outside ``max_distance`` of the ego (xy) and predictions beyond it are left out; so are
ground-truth boxes with a class outside ``classes`` (counted in ``n_gt_ignored``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from perception.structures import Boxes3D, Detections, Sample

THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


def average_precision(scores: np.ndarray, matched: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP of predictions ``scores [N]`` with ``matched [N]`` bool, ``n_gt`` positives."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(matched[order])
    fp = np.cumsum(~matched[order])
    recall = np.concatenate([[0.0], tp / n_gt])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    return float(np.sum(np.diff(recall) * precision[1:]))


def match_centres(pred_xy: np.ndarray, pred_scores: np.ndarray, gt_xy: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy nuScenes matching in descending score: ``matched [N]`` bool for predictions ``pred_xy [N, 2]``."""
    matched = np.zeros(len(pred_xy), bool)
    taken = np.zeros(len(gt_xy), bool)
    for p in np.argsort(-pred_scores, kind="stable"):
        if not len(gt_xy):
            break
        d = np.linalg.norm(gt_xy - pred_xy[p], axis=1)
        d[taken] = np.inf
        g = int(np.argmin(d))
        if d[g] <= threshold:
            matched[p] = taken[g] = True
    return matched


def centre_distance_map(results: Sequence[tuple[Detections, Boxes3D]], classes: Sequence[str],
                        thresholds: Sequence[float] = THRESHOLDS, max_distance: float = 50.0) -> dict[str, float]:
    """``mAP``, ``AP_<class>`` (mean over thresholds) and ``mAP_<t>m`` over ``(predictions, ground truth)`` pairs.

    Classes without ground truth in ``results`` are left out of the means (and of the output).
    """
    per: dict[tuple[str, float], tuple[list, list, int]] = {(c, t): ([], [], 0) for c in classes for t in thresholds}
    for det, gt in results:
        gt_names, det_names = np.array(gt.names), np.array(det.boxes.names)
        gt_near = np.linalg.norm(gt.tensor[:, :2], axis=1) <= max_distance
        det_near = np.linalg.norm(det.boxes.tensor[:, :2], axis=1) <= max_distance
        for c in classes:
            g = gt.tensor[(gt_names == c) & gt_near, :2] if len(gt) else np.zeros((0, 2))
            sel = (det_names == c) & det_near if len(det) else np.zeros(0, bool)
            p, s = det.boxes.tensor[sel, :2], det.scores[sel]
            for t in thresholds:
                scores, matched, n = per[(c, t)]
                scores.append(s)
                matched.append(match_centres(p, s, g, t))
                per[(c, t)] = (scores, matched, n + len(g))
    ap = {}
    for (c, t), (scores, matched, n) in per.items():
        ap[(c, t)] = average_precision(np.concatenate(scores) if scores else np.zeros(0),
                                       np.concatenate(matched) if matched else np.zeros(0, bool), n)
    out: dict[str, float] = {}
    present = [c for c in classes if not np.isnan(ap[(c, thresholds[0])])]  # classes with ground truth
    for c in present:
        out[f"AP_{c}"] = float(np.mean([ap[(c, t)] for t in thresholds]))
    for t in thresholds:
        out[f"mAP_{t:g}m"] = float(np.mean([ap[(c, t)] for c in present])) if present else 0.0
    out["mAP"] = float(np.mean([out[f"AP_{c}"] for c in present])) if present else 0.0
    return out


class CentreDistanceAP(BaseMetric):
    """mmengine metric: :func:`centre_distance_map` over the evaluated frames (``data_batch``: ``list[Sample]``)."""

    default_prefix = "bev"

    def __init__(self, classes: Sequence[str], thresholds: Sequence[float] = THRESHOLDS, max_distance: float = 50.0,
                 collect_device: str = "cpu", prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.classes, self.thresholds, self.max_distance = tuple(classes), tuple(thresholds), max_distance

    def process(self, data_batch: Sequence[Sample], data_samples: Sequence[Detections]) -> None:
        for sample, det in zip(data_batch, data_samples):
            if sample.targets is None:
                raise ValueError(f"CentreDistanceAP: frame {sample.frame.token} has no ground truth")
            self.results.append((det, sample.targets.boxes))

    def compute_metrics(self, results: list) -> dict[str, float]:
        return centre_distance_map(results, self.classes, self.thresholds, self.max_distance)
