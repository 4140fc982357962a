"""Depth metrics (Eigen et al., NeurIPS 2014; the KITTI depth benchmark's set), per view type.

For predicted and ground-truth depth over the valid pixels ``i = 1..n``:

* ``abs_rel = mean(|d - g| / g)``, ``sq_rel = mean((d - g)^2 / g)``,
* ``rmse = sqrt(mean((d - g)^2))``, ``rmse_log = sqrt(mean((log d - log g)^2))``,
* ``a1, a2, a3``: the fraction with ``max(d / g, g / d) < 1.25, 1.25^2, 1.25^3``.

Valid pixels: ``min_depth <= g <= max_depth`` (the caps; KITTI's are 1e-3 and 80 m), ``g`` and ``d``
finite, and the optional ``mask`` (a fisheye's field of view, a LiDAR hit). Predictions are clamped
to ``[min_depth, max_depth]`` before scoring, as the benchmark does. Depth is compared in the
convention both maps share (``z`` for pinholes, range along the ray for fisheyes): the metric does
not convert. :class:`DepthAccumulator` sums per-view-type statistics over many maps so a dataset's
figures are pixel-weighted (every valid pixel counts once), and keeps the number of maps that had no
valid pixel (they add nothing, counted in ``empty``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mmengine.evaluator import BaseMetric

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


@dataclass(frozen=True)
class DepthCaps:
    """Ground truth outside ``[min_depth, max_depth]`` metres is not scored; predictions are clamped into it."""

    min_depth: float = 1e-3
    max_depth: float = 80.0

    def __post_init__(self) -> None:
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"DepthCaps: need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")


def valid_mask(gt: np.ndarray, caps: DepthCaps, mask: np.ndarray | None = None) -> np.ndarray:
    """``gt [...]`` → ``[...]`` bool: finite, within the caps, and inside ``mask`` when given."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(gt) & (gt >= caps.min_depth) & (gt <= caps.max_depth)
    if mask is not None:
        if mask.shape != gt.shape:
            raise ValueError(f"depth metrics: mask shape {mask.shape} != depth shape {gt.shape}")
        ok &= mask.astype(bool)
    return ok


def _sums(pred: np.ndarray, gt: np.ndarray, caps: DepthCaps, mask: np.ndarray | None) -> np.ndarray:
    """Per-map sums ``[n, sum abs_rel, sum sq_rel, sum sq, sum sq_log, n a1, n a2, n a3]`` (float64)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"depth metrics: prediction shape {pred.shape} != ground truth shape {gt.shape}")
    ok = valid_mask(gt, caps, mask) & np.isfinite(pred)
    d = np.clip(pred[ok], caps.min_depth, caps.max_depth)
    g = gt[ok]
    ratio = np.maximum(d / g, g / d)
    return np.array([ok.sum(), (np.abs(d - g) / g).sum(), ((d - g) ** 2 / g).sum(), ((d - g) ** 2).sum(),
                     ((np.log(d) - np.log(g)) ** 2).sum(), (ratio < 1.25).sum(), (ratio < 1.25 ** 2).sum(),
                     (ratio < 1.25 ** 3).sum()])


def _finish(s: np.ndarray) -> dict[str, float]:
    n = s[0]
    if n == 0:
        return {k: float("nan") for k in METRICS}
    return {"abs_rel": s[1] / n, "sq_rel": s[2] / n, "rmse": float(np.sqrt(s[3] / n)),
            "rmse_log": float(np.sqrt(s[4] / n)), "a1": s[5] / n, "a2": s[6] / n, "a3": s[7] / n}


def depth_metrics(pred: np.ndarray, gt: np.ndarray, caps: DepthCaps | None = None,
                  mask: np.ndarray | None = None) -> dict[str, float]:
    """The seven metrics of ``pred [...]`` against ``gt [...]`` (metres) over the valid pixels (NaN if none)."""
    return {k: float(v) for k, v in _finish(_sums(pred, gt, caps or DepthCaps(), mask)).items()}


@dataclass
class DepthAccumulator:
    """Pixel-weighted metrics per view type (e.g. ``"pinhole"``, ``"fisheye"``) over many depth maps."""

    caps: DepthCaps = field(default_factory=DepthCaps)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)
    empty: dict[str, int] = field(default_factory=dict)

    def add(self, view_type: str, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
        s = _sums(pred, gt, self.caps, mask)
        self.sums[view_type] = self.sums.get(view_type, np.zeros(8)) + s
        self.maps[view_type] = self.maps.get(view_type, 0) + 1
        if s[0] == 0:
            self.empty[view_type] = self.empty.get(view_type, 0) + 1

    def results(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}{view_type}/{metric}`` for every view type, plus ``{prefix}all/{metric}`` over all pixels."""
        out: dict[str, float] = {}
        for vt in sorted(self.sums):
            out.update({f"{prefix}{vt}/{k}": float(v) for k, v in _finish(self.sums[vt]).items()})
            out[f"{prefix}{vt}/pixels"] = float(self.sums[vt][0])
        if self.sums:
            out.update({f"{prefix}all/{k}": float(v) for k, v in _finish(sum(self.sums.values())).items()})
        return out


class DepthMetric(BaseMetric):
    """mmengine metric over :class:`~perception.structures.depth.DepthOutput` predictions, per view type.

    Ground truth: ``Targets.depth[camera]`` of each sample (resized by nearest neighbour when its size
    differs from the prediction's). Keys ``{pinhole,fisheye,all}/{abs_rel,...}`` for the model and
    ``baseline/...`` for its baseline's maps when it has them; ``{type}/pixels`` is the pixel count.
    Cameras rendered without their image (``rendered_only``) are scored under ``{type}_rendered``.
    """

    default_prefix = "depth"

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 80.0, collect_device: str = "cpu",
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.caps = DepthCaps(min_depth, max_depth)

    def process(self, data_batch, data_samples) -> None:
        import cv2

        for sample, out in zip(data_batch, data_samples):
            rows = []  # one result per sample: mmengine cuts the collected results to the dataset's length
            if sample.targets is None:
                raise ValueError(f"DepthMetric: sample {sample.frame.token} has no targets")
            for which, maps in (("model", out.maps), ("baseline", out.baseline)):
                for name, dm in (maps or {}).items():
                    gt = sample.targets.depth.get(name)
                    if gt is None:
                        continue
                    g = gt.depth
                    if g.shape != dm.depth.shape:
                        g = cv2.resize(g, dm.depth.shape[::-1], interpolation=cv2.INTER_NEAREST)
                    vt = out.view_types.get(name, "all") + ("_rendered" if name in out.rendered_only else "")
                    rows.append((which, vt, _sums(dm.depth, g, self.caps, None)))
            self.results.append(rows)

    def compute_metrics(self, results: list) -> dict[str, float]:
        out: dict[str, float] = {}
        for which, prefix in (("model", ""), ("baseline", "baseline/")):
            acc = DepthAccumulator(self.caps)
            for w, vt, s in (row for rows in results for row in rows):
                if w == which:
                    acc.sums[vt] = acc.sums.get(vt, np.zeros(8)) + s
            out.update(acc.results(prefix))
        return out
