"""Calibrating a sequence with a trained CalibFormer, and the pipeline's extrinsic-health check.

:class:`Calibrator` runs the model on every frame of a sequence for one (camera, LiDAR) pair, from
one starting extrinsic, and aggregates the per-frame corrections robustly: the component-wise
median of their rotation vectors and translations (one bad frame, e.g. a frame with the view
blocked, moves the result by at most one rank). Corrections are small (at most tens of degrees), so
the rotation vector is a fair coordinate for a median. A model with a learned appearance alignment
(:class:`~.align.CalibAligned`) then aligns that median to all the frames at once (:func:`~.align.align_frames`:
one extrinsic, the mean correlation over the frames), which sees more structure than any one frame.

Real cameras are fed at the model's trained *focal length* in pixels (``focal_px``, 114 px for the
160x96 synthetic training images), not at its training image size: the image is scaled so that its
focal length matches, rounded to a multiple of 16 pixels (so KITTI-360's 1408x376 becomes 288x80).
The model's ray positional encoding carries the rest of the intrinsics.

:class:`ExtrinsicHealthCheck` runs the same estimate on frames as the pipeline sees them (from the
frame's own calibration) and keeps, per camera, the median correction over the last ``window``
checks; a camera whose median correction exceeds the thresholds is *drifted*, and the run summary
says so (``summary()``).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from perception.geometry.camera_base import CameraModel
from perception.models.calibformer.data import CalibSample, calib_input
from perception.models.calibformer.geometry import Miscalibration
from perception.models.calibformer.parallax import ParallaxRefinement, ParallaxView, parallax_view, refine_parallax
from perception.structures import Frame

ROOT = Path(__file__).resolve().parents[3]
# the released model, trained on the synthetic world with jittered camera mounts, so that it calibrates from the
# image rather than from a rig it learned (README: "CalibFormer", tools/calib_control.py)
RELEASED = (ROOT / "configs/calibformer/calibformer_flow_jitter_narrow_sim_cpu.py",
            ROOT / "checkpoints/calibformer_flow_jitter_narrow_sim_cpu.safetensors")
TRAINED_FOCAL_PX = 114.0  # the synthetic pinholes' focal length at the 160x96 training size


def model_size(camera: CameraModel, focal_px: float = TRAINED_FOCAL_PX, multiple: int = 16) -> tuple[int, int]:
    """``(W, H)`` at which ``camera`` (a pinhole: ``fx``) images with focal length ``focal_px``, rounded to ``multiple``."""
    fx = getattr(camera, "fx", None)
    if fx is None:
        raise ValueError(f"model_size: {type(camera).__name__} has no focal length fx; CalibFormer here takes pinholes")
    s = focal_px / fx
    return (max(multiple, int(round(camera.width * s / multiple)) * multiple),
            max(multiple, int(round(camera.height * s / multiple)) * multiple))


def median_correction(corrections: Sequence[Miscalibration]) -> Miscalibration:
    """Component-wise median of the corrections' rotation vectors and translations."""
    if not corrections:
        raise ValueError("median_correction: no corrections")
    rv = np.median(np.stack([Rotation.from_matrix(c.rotation).as_rotvec() for c in corrections]), 0)
    t = np.median(np.stack([c.translation for c in corrections]), 0)
    return Miscalibration(Rotation.from_rotvec(rv).as_matrix(), t)


def median_spread(corrections: Sequence[Miscalibration]) -> np.ndarray:
    """Standard error of :func:`median_correction` per axis from the corrections' own scatter (at least 2):
    ``1.2533 * 1.4826 * MAD / sqrt(n)`` of their rotation vectors (deg) and translations (cm) → ``[6]``. Like
    :func:`~.align.alignment_spread`, a bias the frames share is not in it."""
    if len(corrections) < 2:
        raise ValueError(f"median_spread: needs at least 2 corrections, got {len(corrections)}")
    x = np.stack([c.axes() for c in corrections])
    return 1.2533 * 1.4826 * np.median(np.abs(x - np.median(x, 0)), 0) / np.sqrt(len(x))


@dataclass(frozen=True)
class SequenceCalibration:
    """``estimate [4, 4]`` (camera-from-LiDAR) from ``init [4, 4]`` over ``tokens``; ``per_frame [F, 4, 4]`` the
    single-frame estimates; ``skipped`` frames that could not be used, with the reason; ``aligned``: whether the
    joint alignment over all frames was taken (None: the model has none, the estimate is the median; False: it
    was refused and the median kept); ``deskewed``: how many of the frames' sweeps were moved to the camera's
    exposure (:func:`~.data.calib_input`; the others have no per-point times or no odometry and are as measured);
    ``spread [6]``: how well the frames pin each axis down (deg about, cm along the camera's x, y, z; a lower bound
    on the error: :func:`~.align.alignment_spread` for a taken joint alignment, else :func:`median_spread`; None
    from one frame); ``parallax``: the motion-parallax refinement's result (:func:`~.parallax.refine_parallax`;
    None: not asked for)."""

    init: np.ndarray
    estimate: np.ndarray
    per_frame: np.ndarray
    tokens: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    aligned: bool | None = None
    deskewed: int = 0
    spread: np.ndarray | None = None
    parallax: ParallaxRefinement | None = None


def calibrate_samples(model, samples: Sequence[CalibSample], init: np.ndarray, iterations: int | None = None,
                      batch_size: int = 16, progress: bool = False, parallax: Sequence[ParallaxView] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, bool | None, np.ndarray | None, ParallaxRefinement | None]:
    """One extrinsic for ``samples`` (frames of one camera-LiDAR pair at one size, inputs from ``init [4, 4]``):
    ``model``'s per-frame estimates, their :func:`median_correction` applied to ``init``, then, for a model with
    ``align_sequence`` (:class:`~.align.CalibAligned`), one alignment of that median over all the frames together,
    then, given ``parallax`` (the same frames' :class:`~.parallax.ParallaxView`, in time order), the motion-parallax
    refinement (:func:`~.parallax.refine_parallax`). Returns ``(estimate [4, 4], per_frame [F, 4, 4], aligned,
    spread [6] or None, parallax refinement or None)`` (see :class:`SequenceCalibration`; the spread is that of the
    alignment or the median, before the parallax step); ``progress``: a bar over the frames."""
    from tqdm import tqdm

    if not samples:
        raise ValueError("calibrate_samples: no samples")
    per = []
    with tqdm(total=len(samples), desc="calibrating", unit="frame", disable=not progress) as bar:
        for s in range(0, len(samples), batch_size):
            data = model.data_preprocessor(list(samples[s:s + batch_size]))
            per += [p.cam_from_lidar for p in model.predict(data["inputs"], iterations)]
            bar.update(len(data["inputs"].tokens))
    corrections = [Miscalibration.between(init, p) for p in per]
    est = median_correction(corrections).apply(init)
    aligned, spread, refined = None, None, None
    if hasattr(model, "align_sequence"):
        inputs = model.data_preprocessor(list(samples))["inputs"]
        joint, aligned = model.align_sequence(inputs, torch.from_numpy(est))
        est = joint.cpu().numpy()
        if aligned and len(samples) > 1:
            spread = model.spread(inputs, joint)
    if spread is None and len(samples) > 1:
        spread = median_spread(corrections)
    if parallax is not None:
        refined = refine_parallax(parallax, est)
        est = refined.estimate
    return est, np.stack(per), aligned, spread, refined


class Calibrator:
    """A trained CalibFormer (``config``, ``checkpoint``: see :class:`perception.pipeline.model_stage.ModelStage`)."""

    def __init__(self, config: str | Path = RELEASED[0], checkpoint: str | Path = RELEASED[1], iterations: int | None = None,
                 focal_px: float = TRAINED_FOCAL_PX, device: str = "cpu") -> None:
        from perception.pipeline.model_stage import ModelStage

        self.model = ModelStage(str(config), str(checkpoint), device=device, carry=False).model  # safe loading
        self.iterations = iterations
        self.focal_px = focal_px

    def sample(self, frame: Frame, camera: str, init: np.ndarray, lidar: str | None = None) -> CalibSample:
        """``frame``'s pair as the model's input, at the size that gives the trained focal length, from ``init``."""
        if camera not in frame.calib.cameras:
            raise KeyError(f"Calibrator ({frame.token}): no calibration for camera {camera!r}")
        size = model_size(frame.calib.cameras[camera], self.focal_px)
        x, _ = calib_input(frame, camera, size, lidar=lidar, init=init, intensity=self.model.reads_intensity)
        return CalibSample(x)

    @torch.no_grad()
    def estimate_frame(self, frame: Frame, camera: str, init: np.ndarray, lidar: str | None = None) -> np.ndarray:
        """One frame's estimated ``[4, 4]`` camera-from-LiDAR, refined from ``init``."""
        data = self.model.data_preprocessor([self.sample(frame, camera, init, lidar)])
        return self.model.predict(data["inputs"], self.iterations)[0].cam_from_lidar

    @torch.no_grad()
    def calibrate(self, frames: Sequence[Frame], camera: str, init: np.ndarray, lidar: str | None = None,
                  progress: bool = False, parallax: bool = False) -> SequenceCalibration:
        """:func:`calibrate_samples` over ``frames`` (in time order) from ``init`` (frames without the camera or points
        are skipped; ``progress``: a bar over the frames). ``parallax``: refine by the car's motion between the frames
        (:mod:`~.parallax`; every frame needs its ``ego_pose``)."""
        init = np.asarray(init, np.float64)
        samples, tokens, skipped, views = [], [], [], []
        for f in frames:
            try:
                samples.append(self.sample(f, camera, init, lidar))
                tokens.append(f.token)
            except (KeyError, ValueError) as e:  # a frame without this camera, or without finite points
                skipped.append((f.token, str(e)))
                continue
            if parallax:  # (raises for a frame without a pose: the option cannot be honoured)
                views.append(parallax_view(f, camera, lidar))
        if not samples:
            raise ValueError(f"Calibrator: no usable frame for camera {camera!r}: {skipped[:3]}")
        est, per, aligned, spread, refined = calibrate_samples(self.model, samples, init, self.iterations,
                                                               progress=progress, parallax=views if parallax else None)
        return SequenceCalibration(init, est, per, tuple(tokens), tuple(skipped), aligned,
                                   sum(s.inputs.deskewed for s in samples), spread, refined)


@dataclass
class _CameraHealth:
    corrections: deque
    checks: int = 0
    skipped: int = 0


@dataclass
class ExtrinsicHealthCheck:
    """Flags a camera whose median CalibFormer correction over the last ``window`` checks exceeds
    ``rot_threshold_deg`` or ``trans_threshold_cm`` (after at least ``min_checks``). Runs every ``every``-th frame.

    The released weights (trained on jittered camera mounts) see a camera that physically tilts or turns, from the
    image; they correct no offset, so a camera that only shifts is not seen (README, "CalibFormer";
    ``tests/pipeline/test_extrinsic_health.py``)."""

    calibrator: Calibrator
    cameras: tuple[str, ...] | None = None  # None: every pinhole camera of the frame
    rot_threshold_deg: float = 2.0
    trans_threshold_cm: float = 15.0
    window: int = 10
    min_checks: int = 3
    every: int = 1
    _cams: dict = field(default_factory=dict, repr=False)
    _seen: int = 0

    def __call__(self, frame: Frame) -> None:
        self._seen += 1
        if (self._seen - 1) % self.every:
            return
        if len(frame.lidar) != 1:
            return
        lidar = next(iter(frame.lidar))
        for cam in self.cameras or tuple(frame.cameras):
            model = frame.calib.cameras.get(cam)
            if model is None or not hasattr(model, "fx"):
                continue
            h = self._cams.setdefault(cam, _CameraHealth(deque(maxlen=self.window)))
            init = frame.calib.transform(cam, lidar).matrix
            try:
                est = self.calibrator.estimate_frame(frame, cam, init, lidar)
            except (KeyError, ValueError):
                h.skipped += 1  # the camera missing from this frame, or no finite points: counted
                continue
            h.corrections.append(Miscalibration.between(init, est))
            h.checks += 1

    def summary(self) -> dict:
        """Per camera: checks, skipped, the median correction (deg, cm) and whether it is drifted; ``drifted``: the list."""
        out: dict = {"rot_threshold_deg": self.rot_threshold_deg, "trans_threshold_cm": self.trans_threshold_cm,
                     "window": self.window, "cameras": {}, "drifted": []}
        for cam, h in self._cams.items():
            row = {"checks": h.checks, "skipped": h.skipped, "median_rot_deg": None, "median_trans_cm": None,
                   "drifted": False}
            if h.corrections:
                med = median_correction(list(h.corrections))
                row["median_rot_deg"] = round(med.angle_deg, 3)
                row["median_trans_cm"] = round(float(np.linalg.norm(med.translation)) * 100, 2)
                row["drifted"] = bool(len(h.corrections) >= self.min_checks and (
                    med.angle_deg > self.rot_threshold_deg or row["median_trans_cm"] > self.trans_threshold_cm))
            out["cameras"][cam] = row
            if row["drifted"]:
                out["drifted"].append(cam)
        return out
