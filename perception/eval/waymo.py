"""Waymo Open Dataset 3D detection AP and APH at LEVEL_1 / LEVEL_2.

Sun et al., "Scalability in Perception for Autonomous Driving: Waymo Open Dataset" (CVPR 2020),
Sec. 5.1: ``AP = ∫₀¹ max{p(r') | r' ≥ r} dr`` and APH the same with each true positive weighted by
its heading accuracy. The rules below follow Waymo's reference code, which fixes what the paper
leaves open (``waymo_open_dataset/metrics/``: ``detection_metrics.cc``, ``metrics_utils.cc``,
``matcher.cc``, ``tools/compute_detection_metrics_main.cc``, ``protos/metrics.proto``):

- **Matching**, per frame and class, once per score cutoff ``c`` in ``{0, 0.01, ..., 1}`` over the
  predictions with ``score >= c``: Hungarian matching (``scipy.optimize.linear_sum_assignment``)
  maximising the summed 3D IoU over the pairs with IoU ≥ the class threshold (Vehicle 0.7,
  Pedestrian 0.5, Cyclist 0.5). 3D IoU of upright boxes is mmdet3d's
  ``LiDARInstance3DBoxes.overlaps`` (mmcv ``box_iou_rotated`` in BEV × height overlap).
- **Difficulty** from the LiDAR points in each ground-truth box: > 5 points LEVEL_1, 1..5 LEVEL_2.
  At level L a matched prediction is a TP (whatever its ground truth's level, as Waymo's ``IsTP``),
  an unmatched one an FP, and an unmatched ground truth of level ≤ L an FN: L1 and L2 share TPs and
  FPs and differ in FNs only, so a prediction on a LEVEL_2 box is a TP at L1 too, never an FP.
- **Empty ground truth** (0 points): ``empty_gt="ignore"`` (default) keeps it in the matching and
  a prediction matched to it is neither TP nor FP; ``"drop"`` removes it before matching, as
  Waymo's ``compute_detection_metrics_main`` does (a prediction on it is then an FP).
- **PR points**: per cutoff ``P = TP / (TP + FP)`` (0 without predictions), ``R = TP / (TP + FN)``,
  and ``P := 1`` where ``R = 0``. APH: ``P_H = Σ h / (TP + FP)``, ``R_H = R``, where
  ``h = 1 - |Δθ| / π`` with ``|Δθ|`` the heading error wrapped into ``[0, π]``.
- **AP** (``ComputeMeanAveragePrecision``): add ``(R=0, P=1)``; keep the best P per recall; walk
  from the highest recall down, carrying the running max of P (the monotone envelope); where two
  consecutive recalls are more than ``Δ = 0.05`` apart, insert points every Δ below the higher one
  carrying the envelope so far; the point at ``R = 0`` takes its neighbour's precision; AP is the
  trapezoidal area under these points from ``R = 0`` to the highest recall reached (not extended
  to 1). So AP = 1 for perfect detections, and one FP ranked above the only TP gives 0.5.

Values are in ``[0, 1]`` (Waymo's tools print them so; papers multiply by 100). Not done: no-label
zones, Waymo's ``QuantizedIoU`` (Hungarian weights ``round(IoU · kMaxIoU)``; we use float IoU, which
only differs on near ties), human-set difficulty levels (we use the point rule Waymo applies when a
label has none). Classes without non-empty ground truth are left out of the output and the means.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from mmengine.evaluator import BaseMetric
from scipy.optimize import linear_sum_assignment

from perception.structures import Boxes3D, Detections, Sample

CLASSES = ("Vehicle", "Pedestrian", "Cyclist")
CLASS_MAP: dict[str, tuple[str, ...]] = {  # Waymo class ← our / KITTI / mmdet3d names
    "Vehicle": ("Vehicle", "Car", "Van", "Truck", "Bus"),
    "Pedestrian": ("Pedestrian",),
    "Cyclist": ("Cyclist",),
}
IOU_THRESHOLDS = {"Vehicle": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
SCORE_CUTOFFS = tuple(i / 100 for i in range(101))
RECALL_DELTA = 0.05
LEVEL_2_MAX_POINTS = 5  # a box with 1..5 points is LEVEL_2 only
POINTS_ATTRIBUTE = "num_lidar_pts"


def iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3D IoU ``[N, M]`` of upright boxes ``a [N, >=7]`` and ``b [M, >=7]`` (LiDAR convention), by mmdet3d."""
    import torch
    from mmdet3d.structures import LiDARInstance3DBoxes

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))

    def boxes(t: np.ndarray) -> LiDARInstance3DBoxes:
        return LiDARInstance3DBoxes(torch.as_tensor(np.asarray(t)[:, :7], dtype=torch.float32), box_dim=7)

    return LiDARInstance3DBoxes.overlaps(boxes(a), boxes(b)).numpy().astype(np.float64)


def heading_accuracy(pred_yaw: np.ndarray, gt_yaw: np.ndarray) -> np.ndarray:
    """``1 - |Δθ| / π`` with the heading error ``|Δθ|`` wrapped into ``[0, π]``."""
    d = np.abs(np.mod(np.asarray(pred_yaw, np.float64) - gt_yaw + np.pi, 2 * np.pi) - np.pi)
    return np.clip(1.0 - d / np.pi, 0.0, 1.0)


def hungarian_match(iou: np.ndarray, threshold: float) -> np.ndarray:
    """``pred_to_gt [P]`` (-1: unmatched) maximising the summed ``iou [P, G]`` over pairs with IoU ≥ ``threshold``."""
    match = np.full(iou.shape[0], -1, np.int64)
    if iou.size == 0:
        return match
    rows, cols = linear_sum_assignment(np.where(iou >= threshold, iou, 0.0), maximize=True)
    keep = iou[rows, cols] >= threshold
    match[rows[keep]] = cols[keep]
    return match


def waymo_average_precision(precisions: Sequence[float], recalls: Sequence[float],
                            recall_delta: float = RECALL_DELTA) -> float:
    """Area under the PR points by Waymo's ``ComputeMeanAveragePrecision`` (see the module docstring)."""
    best: dict[float, float] = {0.0: 1.0}
    for p, r in zip(precisions, recalls):
        best[float(r)] = max(best.get(float(r), 0.0), float(p))
    recall_desc = sorted(best, reverse=True)
    if len(recall_desc) == 1:  # nothing recalled at any cutoff
        return 0.0
    points: list[tuple[float, float]] = []  # (recall, precision), recall descending
    last, envelope = recall_desc[-1], 0.0
    for r in recall_desc:
        while last - r > recall_delta + 1e-6:
            last -= recall_delta
            points.append((last, envelope))
        envelope = max(envelope, best[r])
        points.append((r, envelope))
        last = r
    points[-1] = (0.0, points[-2][1])
    rec, prec = np.array(points).T
    return float(np.sum(0.5 * (rec[:-1] - rec[1:]) * (prec[:-1] + prec[1:])))


def _frame_counts(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, n_points: np.ndarray, threshold: float,
                  cutoffs: np.ndarray) -> np.ndarray:
    """``[K, 5]``: TP, FP, Σ heading accuracy, FN at L1, FN at L2 of one frame and class per score cutoff."""
    order = np.argsort(-scores, kind="stable")
    pred, scores = pred[order], scores[order]
    iou = iou_3d(pred, gt)
    empty = n_points <= 0
    out = np.zeros((len(cutoffs), 5))
    done: dict[int, np.ndarray] = {}
    for i, k in enumerate((scores[None, :] >= cutoffs[:, None]).sum(1)):  # the top-k predictions pass cutoff i
        if k not in done:
            m = hungarian_match(iou[:k], threshold)
            matched = m >= 0
            tp = matched.copy()
            tp[matched] = ~empty[m[matched]]
            gt_hit = np.zeros(len(gt), bool)
            gt_hit[m[matched]] = True
            done[k] = np.array([tp.sum(), (~matched).sum(), heading_accuracy(pred[:k][tp, 6], gt[m[tp], 6]).sum(),
                                (~gt_hit & (n_points > LEVEL_2_MAX_POINTS)).sum(), (~gt_hit & ~empty).sum()])
        out[i] = done[k]
    return out


def waymo_ap(results: Sequence[tuple[Detections, Boxes3D, np.ndarray]], classes: Sequence[str] = CLASSES,
             class_map: Mapping[str, Sequence[str]] | None = None,
             iou_thresholds: Mapping[str, float] | None = None, score_cutoffs: Sequence[float] = SCORE_CUTOFFS,
             recall_delta: float = RECALL_DELTA, empty_gt: Literal["ignore", "drop"] = "ignore") -> dict[str, float]:
    """``<class>/L{1,2}_AP{,H}`` and ``mAP{,H}_L{1,2}`` over ``(predictions, ground truth, points per GT box [N])``.

    ``class_map`` maps each Waymo class in ``classes`` to the box names it covers (default
    :data:`CLASS_MAP`; a class missing from it covers its own name); ``iou_thresholds`` overrides
    :data:`IOU_THRESHOLDS` per class.
    """
    if empty_gt not in ("ignore", "drop"):
        raise ValueError(f"waymo_ap: empty_gt must be 'ignore' or 'drop', got {empty_gt!r}")
    cmap = {**CLASS_MAP, **(class_map or {})}
    thresholds = {**IOU_THRESHOLDS, **(iou_thresholds or {})}
    missing = [c for c in classes if c not in thresholds]
    if missing:
        raise ValueError(f"waymo_ap: no IoU threshold for classes {missing}; pass iou_thresholds")
    cutoffs = np.asarray(score_cutoffs, np.float64)
    counts = {c: np.zeros((len(cutoffs), 5)) for c in classes}
    n_gt = dict.fromkeys(classes, 0)
    for det, gt, n_points in results:
        n_points = np.asarray(n_points).reshape(-1)
        if len(n_points) != len(gt):
            raise ValueError(f"waymo_ap: {len(n_points)} point counts for {len(gt)} ground-truth boxes")
        gt_names, det_names = np.array(gt.names, dtype=object), np.array(det.boxes.names, dtype=object)
        for c in classes:
            members = list(cmap.get(c, (c,)))
            g = np.isin(gt_names, members) if len(gt) else np.zeros(0, bool)
            if empty_gt == "drop":
                g &= n_points > 0
            p = np.isin(det_names, members) if len(det) else np.zeros(0, bool)
            counts[c] += _frame_counts(det.boxes.tensor[p], det.scores[p], gt.tensor[g], n_points[g],
                                       thresholds[c], cutoffs)
            n_gt[c] += int((n_points[g] > 0).sum())
    out: dict[str, float] = {}
    present = [c for c in classes if n_gt[c] > 0]
    for c in present:
        tp, fp, ha, fn1, fn2 = counts[c].T
        for level, fn in (("L1", fn1), ("L2", fn2)):
            recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
            prec = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
            prec_h = np.divide(ha, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
            prec[recall == 0], prec_h[recall == 0] = 1.0, 1.0
            out[f"{c}/{level}_AP"] = waymo_average_precision(prec, recall, recall_delta)
            out[f"{c}/{level}_APH"] = waymo_average_precision(prec_h, recall, recall_delta)
    for level in ("L1", "L2"):
        for kind in ("AP", "APH"):
            vals = [out[f"{c}/{level}_{kind}"] for c in present]
            out[f"m{kind}_{level}"] = float(np.mean(vals)) if vals else 0.0
    return out


def gt_num_points(sample: Sample, attribute: str = POINTS_ATTRIBUTE) -> np.ndarray:
    """LiDAR points in each ground-truth box ``[N]``: ``Targets.attributes[attribute]`` when the reader gave it
    (sim, mmdet3d infos), else counted in the frame's LiDAR (all sweeps of ``frame.lidar``, ego frame)."""
    if sample.targets is None:
        raise ValueError(f"gt_num_points: frame {sample.frame.token} has no ground truth")
    boxes = sample.targets.boxes
    if attribute in sample.targets.attributes:
        return np.asarray(sample.targets.attributes[attribute], np.int64)
    if not sample.frame.lidar:
        raise ValueError(f"gt_num_points: frame {sample.frame.token} has no {attribute!r} attribute and no LiDAR "
                         "to count points in its boxes")
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    return boxes.points_in_boxes(sample.frame.points_in_ego()).sum(0).astype(np.int64)


class WaymoAP(BaseMetric):
    """mmengine metric: :func:`waymo_ap` over the evaluated frames (``data_batch``: ``list[Sample]``).

    ``xy_range=(x_min, y_min, x_max, y_max)`` evaluates a model that only sees part of the scene (a
    CPU-sized grid): ground truth and predictions whose centre lies outside are left out, as mmdet3d's
    range filter does; ``None`` (default, Waymo's rule) keeps everything.
    """

    default_prefix = "waymo"

    def __init__(self, classes: Sequence[str] = CLASSES, class_map: Mapping[str, Sequence[str]] | None = None,
                 iou_thresholds: Mapping[str, float] | None = None, score_cutoffs: Sequence[float] = SCORE_CUTOFFS,
                 empty_gt: Literal["ignore", "drop"] = "ignore", points_attribute: str = POINTS_ATTRIBUTE,
                 xy_range: Sequence[float] | None = None, collect_device: str = "cpu", prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.kwargs = dict(classes=tuple(classes), class_map=class_map, iou_thresholds=iou_thresholds,
                           score_cutoffs=tuple(score_cutoffs), empty_gt=empty_gt)
        self.points_attribute = points_attribute
        if xy_range is not None and (len(xy_range) != 4 or not (xy_range[0] < xy_range[2] and xy_range[1] < xy_range[3])):
            raise ValueError(f"WaymoAP.xy_range: expected (x_min, y_min, x_max, y_max), got {xy_range!r}")
        self.xy_range = None if xy_range is None else tuple(float(v) for v in xy_range)

    def _inside(self, boxes: Boxes3D) -> np.ndarray:
        if self.xy_range is None:
            return np.ones(len(boxes), bool)
        x0, y0, x1, y1 = self.xy_range
        xy = boxes.tensor[:, :2]
        return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)

    def process(self, data_batch: Sequence[Sample], data_samples: Sequence[Detections]) -> None:
        for sample, det in zip(data_batch, data_samples):
            if sample.targets is None:
                raise ValueError(f"WaymoAP: frame {sample.frame.token} has no ground truth")
            gt, n_points = sample.targets.boxes, gt_num_points(sample, self.points_attribute)
            keep, kept = self._inside(gt), self._inside(det.boxes)
            det = Detections(det.boxes.select(np.flatnonzero(kept)), det.scores[kept])
            self.results.append((det, gt.select(np.flatnonzero(keep)), n_points[keep]))

    def compute_metrics(self, results: list) -> dict[str, float]:
        return waymo_ap(results, **self.kwargs)
