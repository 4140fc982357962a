"""Hooks the configs use: prediction pictures for ``tools/test.py --show-dir`` and progress bars."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from perception.structures import Detections, Sample


class DetectionVisHook(Hook):
    """Writes ``show_dir/<token>.png`` per tested frame: ground truth (left) and predictions (right) in BEV.

    ``xy_range`` ``(x_min, y_min, x_max, y_max)`` m; ``score_threshold`` hides weak predictions.
    Does nothing when ``show_dir`` is ``None``.
    """

    priority = "LOW"

    def __init__(self, show_dir: str | None = None, xy_range=(-40.0, -40.0, 40.0, 40.0), resolution: float = 0.1,
                 score_threshold: float = 0.3) -> None:
        self.show_dir = None if show_dir is None else Path(show_dir)
        self.xy_range, self.resolution, self.score_threshold = tuple(xy_range), resolution, score_threshold
        self.written = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.show_dir is None or not is_main_process():
            return
        from PIL import Image

        from perception.viz.bev import render_bev

        self.show_dir.mkdir(parents=True, exist_ok=True)
        for sample, det in zip(data_batch, outputs):
            if not isinstance(sample, Sample) or not isinstance(det, Detections):
                raise TypeError(f"DetectionVisHook: expected Sample and Detections, got "
                                f"{type(sample).__name__} and {type(det).__name__}")
            points = sample.frame.points_in_ego()
            gt = sample.targets.boxes if sample.targets is not None else None
            keep = det.scores >= self.score_threshold
            left = render_bev(points, gt, self.xy_range, self.resolution)
            right = render_bev(points, det.boxes.select(keep), self.xy_range, self.resolution, scores=det.scores[keep])
            gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
            Image.fromarray(np.concatenate([left, gap, right], 1)).save(self.show_dir / f"{sample.frame.token}.png")
            self.written += 1


class ProgressBarHook(Hook):
    """A tqdm bar over validation and test iterations (training progress is the logger's ETA lines)."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._bar = None

    def _open(self, runner, loader, what: str) -> None:
        if is_main_process():
            from tqdm import tqdm

            self._bar = tqdm(total=len(loader), desc=what, unit="batch", leave=False)

    def _step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def before_val_epoch(self, runner) -> None:
        self._open(runner, runner.val_dataloader, "val")

    def before_test_epoch(self, runner) -> None:
        self._open(runner, runner.test_dataloader, "test")

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step()

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._close()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._close()
