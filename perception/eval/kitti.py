"""KITTI 3D / BEV / 2D detection AP (R40), computed by mmdet3d's KITTI evaluator.

Geiger et al., "Are we ready for autonomous driving? The KITTI vision benchmark suite" (CVPR 2012);
the 40-recall-position AP (R40) of Simonelli et al., "Disentangling Monocular 3D Object Detection"
(ICCV 2019), now the official KITTI metric. The numbers are those of
``mmdet3d.evaluation.functional.kitti_eval`` by construction (it *is* that evaluator, in percent,
0..100); this module only converts our boxes into its annotation dicts, per frame:

- ``location`` (bottom centre), ``dimensions`` (l, h, w) and ``rotation_y`` in a KITTI camera frame
  (x right, y down, z forward), ``rotation_y`` being the exact inverse of the reader's
  :func:`~perception.geometry.boxes.camera_box_to_lidar` (the heading in the camera's x-z plane whose
  ego-frame projection points along the box's yaw): for KITTI frames the rectified camera-0 frame of ``label_2`` (its
  ``R0_rect · Tr_velo_to_cam`` read from ``calib/<token>.txt`` next to the frame's velodyne file,
  since the reader keeps only the camera-2 frame, which differs by ``P2``'s baseline), so ground
  truth reproduces the label files; for other frames a gravity-aligned frame at the camera, facing
  its optical axis projected onto the ground. AP does not depend on this choice (ground truth and
  predictions move together; it only changes the exported numbers).
- ``bbox``: ground truth keeps ``Targets.boxes_2d`` when they are in ``camera`` (KITTI's labels);
  otherwise, and for predictions, the 8 corners in front of the camera are projected with its
  model and their extent clipped to ``[0, W] × [0, H]``, as mmdet3d's ``KittiMetric`` does; boxes
  with no corner in front or whose extent misses the image are dropped, as there.
- ``alpha = rotation_y - atan2(x, z)``; ground truth's ``truncated`` / ``occluded`` / ``alpha`` /
  ``name`` come from ``Targets.attributes`` when present (the KITTI reader stores them), else 0 / 0 /
  computed / the box's class name; ``Targets.ignore_regions_2d`` become ``DontCare`` entries.

mmdet3d's evaluator computes rotated BEV IoU with a numba-CUDA kernel (``kitti_utils/rotate_iou``)
that cannot be imported without a GPU; where numba finds none, the call is served by
:func:`rotate_iou_cpu` (mmcv's ``box_iou_rotated``, tested against that kernel on numba's CUDA
simulator). Like KITTI's devkit, R40 samples precision at the score thresholds reached at each
1/40 of recall, so with n < 41 valid ground-truth boxes even perfect predictions score
``(n - 1) / 40 · 100``.
"""
from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from mmengine.evaluator import BaseMetric

from perception.geometry.boxes import yaw_rotation
from perception.geometry.se3 import SE3
from perception.structures import Boxes3D, Calibration, Detections, Frame, Sample

CAMERA = "CAM2"
CLASSES = ("Car", "Pedestrian", "Cyclist")  # the classes mmdet3d's kitti_eval can score
ANNO_KEYS = ("name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y")
_ROTATE_IOU = "mmdet3d.evaluation.functional.kitti_utils.rotate_iou"


def kitti_reference_frame(frame: Frame, camera: str = CAMERA) -> SE3:
    """``ref_from_ego``: the KITTI camera frame the annotations live in (see the module docstring)."""
    velodyne = frame.meta.get("velodyne")
    if frame.source == "kitti" and velodyne is not None:
        calib_file = Path(str(velodyne)).parent.parent / "calib" / f"{frame.token}.txt"
        if calib_file.is_file():
            from perception.data.kitti import LIDAR, read_calib

            return SE3(read_calib(calib_file).rect_from_velo) @ frame.calib.transform(LIDAR, "ego")
    ego_from_cam = frame.calib.transform("ego", camera)
    fwd = ego_from_cam.rotation[:, 2]
    yaw = np.arctan2(fwd[1], fwd[0])
    z = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    y = np.array([0.0, 0.0, -1.0])
    return SE3.from_rt(np.stack([np.cross(y, z), y, z], axis=1), ego_from_cam.translation).inverse()


def boxes_to_kitti(boxes: Boxes3D, calib: Calibration, camera: str, ref_from_ego: SE3) -> dict[str, np.ndarray]:
    """Ego-frame ``boxes`` → KITTI fields ``location, dimensions, rotation_y, alpha, bbox`` and ``in_image [N]``."""
    t = boxes.tensor.astype(np.float64)
    location = ref_from_ego.apply(t[:, :3])
    # rotation_y: the heading in the camera's x-z plane whose ego-frame xy projection points along yaw, i.e. the
    # exact inverse of camera_box_to_lidar (h(ry) = (cos ry, 0, -sin ry) ⟂ the ego-xy normal of yaw, in front)
    rot = yaw_rotation(t[:, 6])  # [N, 3, 3] columns: heading, its left normal, up
    normal = rot[:, :, 1] @ ref_from_ego.rotation.T  # [N, 3] in the reference frame
    rotation_y = np.arctan2(normal[:, 0], normal[:, 2])
    h = np.stack([np.cos(rotation_y), np.zeros(len(t)), -np.sin(rotation_y)], axis=1) @ ref_from_ego.rotation
    rotation_y = np.where(np.einsum("nj,nj->n", h, rot[:, :, 0]) < 0, rotation_y + np.pi, rotation_y)
    rotation_y = np.mod(rotation_y + np.pi, 2 * np.pi) - np.pi
    alpha = np.mod(rotation_y - np.arctan2(location[:, 0], location[:, 2]) + np.pi, 2 * np.pi) - np.pi
    model = calib.cameras[camera]
    bbox = np.zeros((len(t), 4))
    in_image = np.zeros(len(t), bool)
    if len(t):
        corners = boxes.corners()  # [N, 8, 3]
        uv, depth, _ = calib.project(corners.reshape(-1, 3), camera, "ego")
        uv, front = uv.reshape(-1, 8, 2), depth.reshape(-1, 8) > 1e-3
        big = np.where(front[..., None], uv, np.inf)
        small = np.where(front[..., None], uv, -np.inf)
        bbox = np.concatenate([big.min(1), small.max(1)], axis=1)
        in_image = front.any(1) & (bbox[:, 0] < model.width) & (bbox[:, 1] < model.height) & (bbox[:, 2] > 0) & (
            bbox[:, 3] > 0)
        bbox = np.where(in_image[:, None], bbox, 0.0)
        bbox[:, 0::2] = bbox[:, 0::2].clip(0, model.width)
        bbox[:, 1::2] = bbox[:, 1::2].clip(0, model.height)
    dims = t[:, [3, 5, 4]]  # l, h, w
    return {"location": location, "dimensions": dims, "rotation_y": rotation_y, "alpha": alpha, "bbox": bbox,
            "in_image": in_image}


def _anno(names, truncated, occluded, alpha, bbox, dims, loc, ry, score=None) -> dict[str, np.ndarray]:
    out = {"name": np.array(list(names), dtype=str), "truncated": np.asarray(truncated, np.float64),
           "occluded": np.asarray(occluded, np.int64), "alpha": np.asarray(alpha, np.float64),
           "bbox": np.asarray(bbox, np.float64).reshape(-1, 4),
           "dimensions": np.asarray(dims, np.float64).reshape(-1, 3),
           "location": np.asarray(loc, np.float64).reshape(-1, 3), "rotation_y": np.asarray(ry, np.float64)}
    if score is not None:
        out["score"] = np.asarray(score, np.float64)
    return out


def gt_annos(sample: Sample, camera: str = CAMERA) -> dict[str, np.ndarray]:
    """One frame's ground truth as a KITTI ``gt_annos`` entry (``DontCare`` regions appended)."""
    if sample.targets is None:
        raise ValueError(f"gt_annos: frame {sample.frame.token} has no ground truth")
    t, n = sample.targets, len(sample.targets.boxes)
    k = boxes_to_kitti(t.boxes, sample.frame.calib, camera, kitti_reference_frame(sample.frame, camera))
    attrs = t.attributes
    labelled_2d = t.boxes_2d is not None and t.boxes_2d_camera == camera
    keep = np.ones(n, bool) if labelled_2d else k["in_image"]
    names = np.asarray(attrs["name"] if "name" in attrs else t.boxes.names, dtype=str)
    anno = _anno(names[keep], np.asarray(attrs.get("truncated", np.zeros(n)))[keep],
                 np.asarray(attrs.get("occluded", np.zeros(n)))[keep], np.asarray(attrs.get("alpha", k["alpha"]))[keep],
                 (t.boxes_2d if labelled_2d else k["bbox"])[keep], k["dimensions"][keep], k["location"][keep],
                 k["rotation_y"][keep])
    regions = t.ignore_regions_2d
    if regions is not None and len(regions) and t.boxes_2d_camera in (camera, None):
        m = len(regions)
        dc = _anno(["DontCare"] * m, -np.ones(m), -np.ones(m), np.full(m, -10.0), regions, -np.ones((m, 3)),
                   np.full((m, 3), -1000.0), np.full(m, -10.0))
        anno = {key: np.concatenate([anno[key], dc[key]]) for key in ANNO_KEYS}
    return anno


def det_annos(det: Detections, frame: Frame, camera: str = CAMERA) -> dict[str, np.ndarray]:
    """One frame's predictions as a KITTI ``dt_annos`` entry (boxes outside the image dropped)."""
    k = boxes_to_kitti(det.boxes, frame.calib, camera, kitti_reference_frame(frame, camera))
    keep = k["in_image"]
    n = int(keep.sum())
    return _anno(np.asarray(det.boxes.names, dtype=str)[keep], np.zeros(n), np.zeros(n), k["alpha"][keep],
                 k["bbox"][keep], k["dimensions"][keep], k["location"][keep], k["rotation_y"][keep], det.scores[keep])


def rotate_iou_cpu(boxes: np.ndarray, query_boxes: np.ndarray, criterion: int = -1, device_id: int = 0) -> np.ndarray:
    """CPU stand-in for mmdet3d's ``rotate_iou_gpu_eval`` on mmcv's ``box_iou_rotated``.

    ``boxes [N, 5]``, ``query_boxes [K, 5]``: ``(x, z, l, w, angle)`` in the camera's BEV, the kernel's
    corners turned by ``-angle`` (mmcv's ``clockwise=False``). Returns ``[N, K]`` float32: IoU
    (``criterion=-1``), intersection / query area (0), / box area (1), or the intersection (2).
    """
    import torch
    from mmcv.ops import box_iou_rotated

    b = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 5).copy())
    q = torch.from_numpy(np.asarray(query_boxes, np.float32).reshape(-1, 5).copy())
    if len(b) == 0 or len(q) == 0:
        return np.zeros((len(b), len(q)), np.float32)
    area_b, area_q = (b[:, 2] * b[:, 3])[:, None], (q[:, 2] * q[:, 3])[None]  # signed, as the kernel's
    b[:, 2:4], q[:, 2:4] = b[:, 2:4].abs().clamp(min=1e-4), q[:, 2:4].abs().clamp(min=1e-4)
    iou = box_iou_rotated(b, q, clockwise=False)
    inter = iou * ((b[:, 2] * b[:, 3])[:, None] + (q[:, 2] * q[:, 3])[None]) / (1 + iou)
    out = {-1: inter / (area_b + area_q - inter), 0: inter / area_q, 1: inter / area_b}.get(criterion, inter)
    return out.numpy().astype(np.float32)


@contextmanager
def _rotated_iou_backend() -> Iterator[None]:
    """Serve mmdet3d's ``rotate_iou`` module from :func:`rotate_iou_cpu` while numba has no CUDA device."""
    import numba.cuda

    if _ROTATE_IOU in sys.modules or numba.cuda.is_available():
        yield
        return
    stub = types.ModuleType(_ROTATE_IOU)
    stub.rotate_iou_gpu_eval = rotate_iou_cpu
    sys.modules[_ROTATE_IOU] = stub
    try:
        yield
    finally:
        if sys.modules.get(_ROTATE_IOU) is stub:
            del sys.modules[_ROTATE_IOU]


def kitti_eval_annos(gt: Sequence[dict], dt: Sequence[dict], classes: Sequence[str] = CLASSES) -> dict[str, float]:
    """mmdet3d's ``kitti_eval`` on annotation dicts → ``<Class>_{3D,BEV,2D}_AP40_{easy,moderate,hard}`` (percent).

    Keys without a suffix use KITTI's strict IoU (Car 0.7, Pedestrian / Cyclist 0.5); ``..._loose``
    the loose one (0.5 / 0.25); ``Overall_...`` is the mean over ``classes`` (strict). Classes with no
    ground-truth box of their name are left out.
    """
    from mmdet3d.evaluation.functional import kitti_eval

    if len(gt) != len(dt):
        raise ValueError(f"kitti_eval_annos: {len(gt)} ground-truth frames but {len(dt)} prediction frames")
    bad = [c for c in classes if c not in CLASSES]
    if bad:
        raise ValueError(f"kitti_eval_annos: mmdet3d's kitti_eval scores only {CLASSES}, got {bad}")
    present = [c for c in classes if any(c in a["name"] for a in gt)]
    if not present:
        return {}
    order = sorted(range(len(gt)), key=lambda i: len(gt[i]["name"]) == 0)  # kitti_eval reads gt[0]["alpha"][0]
    with _rotated_iou_backend():
        _, raw = kitti_eval([gt[i] for i in order], [dt[i] for i in order], list(present),
                            eval_types=["bbox", "bev", "3d"])
    out = {}
    for key, value in raw.items():
        if "AP40" not in key:
            continue
        name = key.removeprefix("KITTI/").replace("_strict", "")
        out[name] = float(value)
    return out


def kitti_ap(results: Sequence[tuple[Detections, Sample]], classes: Sequence[str] = CLASSES,
             camera: str = CAMERA) -> dict[str, float]:
    """:func:`kitti_eval_annos` over ``(predictions, sample)`` pairs (boxes in the sample's ego frame)."""
    gt = [gt_annos(s, camera) for _, s in results]
    return kitti_eval_annos(gt, [det_annos(d, s.frame, camera) for d, s in results], classes)


class KittiAP(BaseMetric):
    """mmengine metric: :func:`kitti_ap` over the evaluated frames (``data_batch``: ``list[Sample]``).

    ``repeat=k`` scores every frame ``k`` times: the precision-recall curve is unchanged (all counts scale
    by ``k``), but R40 then samples it at all 40 recall positions once ``k · n >= 41``, lifting the
    ``(n - 1) / 40`` cap of ``n < 41`` ground-truth boxes (see the module docstring). For tiny sets (an
    overfit check); KITTI's own numbers are ``repeat=1``.
    """

    default_prefix = "kitti"

    def __init__(self, classes: Sequence[str] = CLASSES, camera: str = CAMERA, collect_device: str = "cpu",
                 prefix: str | None = None, repeat: int = 1) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if int(repeat) < 1:
            raise ValueError(f"KittiAP: repeat must be >= 1, got {repeat}")
        self.classes, self.camera, self.repeat = tuple(classes), camera, int(repeat)

    def process(self, data_batch: Sequence[Sample], data_samples: Sequence[Detections]) -> None:
        for sample, det in zip(data_batch, data_samples):
            self.results.append((gt_annos(sample, self.camera), det_annos(det, sample.frame, self.camera)))

    def compute_metrics(self, results: list) -> dict[str, float]:
        results = list(results) * self.repeat
        return kitti_eval_annos([g for g, _ in results], [d for _, d in results], self.classes)
