"""LiDAR-camera calibration error, in LCCNet's and CalibFormer's terms.

For an estimated extrinsic ``T_est`` and the truth ``T_gt`` (both camera-from-LiDAR ``[4, 4]``):

- **translation error** ``t_est - t_gt`` (the LiDAR origin's position error in camera axes), in cm:
  its norm and the absolute value per axis (x right, y down, z forward);
- **rotation error** ``R_err = R_est R_gt^T`` (camera axes): the geodesic angle
  ``arccos((tr R_err - 1) / 2)`` (computed as the norm of its rotation vector, exact near zero) and the absolute XYZ Euler angles of ``R_err``, in degrees, named by
  the vehicle axis each camera axis corresponds to for a forward-looking camera: **pitch** about the
  camera x (right) axis, **yaw** about y (down, the vertical), **roll** about z (the optical axis).
  (LCCNet's code labels the same three angles roll/pitch/yaw in x/y/z order; their mean is the same.)

Summaries give mean, median and std over pairs of every quantity; the per-axis *means* averaged over the
three axes are ``trans_axis_mean_cm`` and ``rot_axis_mean_deg``: the figures LCCNet and CalibFormer report
as their headline (CalibFormer, KITTI: 0.8751 cm and 0.0562 deg). This error convention matches the
correction parametrisation of :mod:`perception.models.calibformer.geometry`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from scipy.spatial.transform import Rotation

QUANTITIES = ("trans_norm_cm", "trans_x_cm", "trans_y_cm", "trans_z_cm",
              "rot_geodesic_deg", "rot_pitch_deg", "rot_yaw_deg", "rot_roll_deg")


def _extrinsics(t: np.ndarray, name: str) -> np.ndarray:
    t = np.asarray(t, np.float64)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"calibration_errors: {name} must be [4, 4], [3, 4] or a stack [N, 4, 4], got {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError(f"calibration_errors: {name} has non-finite entries")
    return t


def calibration_errors(est: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair errors of ``est`` against ``gt`` (each ``[4, 4]`` or ``[N, 4, 4]``): ``{quantity: [N]}`` (see ``QUANTITIES``)."""
    e, g = _extrinsics(est, "est"), _extrinsics(gt, "gt")
    if e.shape[0] != g.shape[0] and g.shape[0] != 1:
        raise ValueError(f"calibration_errors: {e.shape[0]} estimates but {g.shape[0]} ground truths")
    g = np.broadcast_to(g, (e.shape[0],) + g.shape[1:])
    dt = (e[:, :3, 3] - g[:, :3, 3]) * 100.0  # [N, 3] cm
    r_err = e[:, :3, :3] @ np.swapaxes(g[:, :3, :3], 1, 2)  # [N, 3, 3]
    # project onto SO(3) first: hand-typed or float32 rotations are only nearly orthonormal, and
    # arccos((tr - 1) / 2) loses precision near 0 (0.03 deg from a 1e-7 defect); the rotation vector does not
    u, _, vt = np.linalg.svd(r_err)
    rot = Rotation.from_matrix(u @ vt)
    euler = np.abs(rot.as_euler("xyz", degrees=True))  # [N, 3] about x, y, z
    return {"trans_norm_cm": np.linalg.norm(dt, axis=1), "trans_x_cm": np.abs(dt[:, 0]),
            "trans_y_cm": np.abs(dt[:, 1]), "trans_z_cm": np.abs(dt[:, 2]),
            "rot_geodesic_deg": np.degrees(rot.magnitude()), "rot_pitch_deg": euler[:, 0],
            "rot_yaw_deg": euler[:, 1], "rot_roll_deg": euler[:, 2]}


def summarize(errors: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """``<prefix><quantity>_{mean,median,std}`` plus the per-axis headline means ``trans_axis_mean_cm``, ``rot_axis_mean_deg``."""
    n = len(next(iter(errors.values()))) if errors else 0
    if n == 0:
        raise ValueError("summarize: no pairs to summarize")
    out: dict[str, float] = {}
    for k in QUANTITIES:
        v = errors[k]
        out[f"{prefix}{k}_mean"] = float(v.mean())
        out[f"{prefix}{k}_median"] = float(np.median(v))
        out[f"{prefix}{k}_std"] = float(v.std())
    out[f"{prefix}trans_axis_mean_cm"] = float(np.mean([errors[f"trans_{a}_cm"].mean() for a in "xyz"]))
    out[f"{prefix}rot_axis_mean_deg"] = float(np.mean([errors[f"rot_{a}_deg"].mean() for a in ("pitch", "yaw", "roll")]))
    return out


def before_after(init: np.ndarray, est: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Summaries of the initial (``init/``) and estimated extrinsics' errors, and the reduction factors
    ``rot_reduction`` / ``trans_reduction`` (mean initial over mean final geodesic / translation-norm error)."""
    a, b = summarize(calibration_errors(init, gt), "init/"), summarize(calibration_errors(est, gt))
    out = {**a, **b}
    out["rot_reduction"] = a["init/rot_geodesic_deg_mean"] / max(b["rot_geodesic_deg_mean"], 1e-12)
    out["trans_reduction"] = a["init/trans_norm_cm_mean"] / max(b["trans_norm_cm_mean"], 1e-12)
    return out


class CalibrationMetric(BaseMetric):
    """mmengine metric over CalibFormer's predictions: errors before (``init/``) and after refinement, the
    per-iteration geodesic / translation means ``iter<k>/...``, and for a model with an appearance alignment
    ``align_refused``, the number of pairs whose alignment was refused (their estimate is the network's)."""

    default_prefix = "calib"

    def process(self, data_batch: Sequence, data_samples: Sequence) -> None:
        for sample, pred in zip(data_batch, data_samples):
            if sample.target is None:
                raise ValueError(f"CalibrationMetric: pair {sample.inputs.token} has no true extrinsic")
            self.results.append((pred.steps, sample.target.cam_from_lidar, pred.aligned))

    def compute_metrics(self, results: list) -> dict[str, float]:
        steps = np.stack([s for s, _, _ in results])  # [N, K+1, 4, 4]
        gt = np.stack([g for _, g, _ in results])
        out = before_after(steps[:, 0], steps[:, -1], gt)
        for k in range(1, steps.shape[1] - 1):
            e = calibration_errors(steps[:, k], gt)
            out[f"iter{k}/rot_geodesic_deg_mean"] = float(e["rot_geodesic_deg"].mean())
            out[f"iter{k}/trans_norm_cm_mean"] = float(e["trans_norm_cm"].mean())
        aligned = [a for _, _, a in results if a is not None]
        if aligned:
            out["align_refused"] = float(len(aligned) - sum(aligned))
        return out
