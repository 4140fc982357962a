"""Where the pipeline's results go: per-frame sinks that write files and report what they wrote.

The runner hands every frame that made it through, in input order, to ``sink(item)`` as a
:class:`SinkItem` (the ``Frame`` plus the model's ``FramePrediction``, if any, and ground truth when
the source had it). Every sink has ``__call__(item)`` and ``close() -> dict`` (paths and counts, for
the run summary); files are written atomically (temp file + rename), so a crashed run never leaves a
file that looks complete. Used as a context manager, a sink closes on success and discards its
unfinished output on an exception.

* :class:`PredictionTable` -- parquet, one row per box, plus a frames table with one row per frame
  (so a frame with no detections is still in the output: nothing is silently dropped) that also
  holds each frame's plan;
* :class:`PngSink` -- BEV PNGs (points, predicted boxes with scores, Gaussians, the plan) named by frame token;
* :class:`McapSink` -- an MCAP file for Foxglove Studio (:class:`~perception.viz.mcap_writer.McapWriter`);
* :class:`MultiSink` -- several sinks at once.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from perception.pipeline.model_stage import FramePrediction
from perception.pipeline.types import Preprocessed
from perception.structures import Frame, Sample, Targets


@dataclass(frozen=True)
class SinkItem:
    """One frame's results: the ``frame`` (what the car saw), the model's ``prediction`` (None when no
    model ran on it) and ``targets`` (ground truth, None when the source has none)."""

    frame: Frame
    prediction: FramePrediction | None = None
    targets: Targets | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.frame, Frame):
            raise TypeError(f"SinkItem.frame: expected a Frame, got {type(self.frame).__name__}")
        if self.prediction is not None and self.prediction.token != self.frame.token:
            raise ValueError(f"SinkItem: prediction for {self.prediction.token!r} paired with frame {self.frame.token!r}")


def as_sink_item(item: Any) -> SinkItem:
    """A :class:`SinkItem` from one, or from a ``Frame`` / ``Sample`` / ``Preprocessed`` (no prediction)."""
    if isinstance(item, SinkItem):
        return item
    if isinstance(item, Sample):
        return SinkItem(item.frame, None, item.targets)
    if isinstance(item, Preprocessed):
        return SinkItem(item.frame)
    if isinstance(item, Frame):
        return SinkItem(item)
    raise TypeError(f"sink: expected a SinkItem, Frame, Sample or Preprocessed, got {type(item).__name__}"
                    + (" (a FramePrediction needs its Frame: pass SinkItem(frame, prediction))"
                       if isinstance(item, FramePrediction) else ""))


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class Sink:
    """Base class: ``__call__(item)``, ``close() -> dict``, ``abort()``; a context manager."""

    def __call__(self, item: Any) -> None:
        raise NotImplementedError

    def close(self) -> dict[str, Any]:
        raise NotImplementedError

    def abort(self) -> None:
        """Discard unfinished output (default: nothing to discard)."""

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------
# parquet
# --------------------------------------------------------------------------------------------

BOX_COLUMNS = ("frame_index", "token", "timestamp", "model", "box_index", "label", "class", "score",
               "x", "y", "z", "dx", "dy", "dz", "yaw", "vx", "vy")
FRAME_COLUMNS = ("frame_index", "token", "timestamp", "model", "has_prediction", "has_detections", "num_boxes",
                 "has_plan", "plan_poses", "plan_times", "plan_candidate_scores", "plan_missing", "num_gaussians")


def _box_schema():
    import pyarrow as pa

    f32 = pa.float32()
    return pa.schema([("frame_index", pa.int64()), ("token", pa.string()), ("timestamp", pa.float64()),
                      ("model", pa.string()), ("box_index", pa.int32()), ("label", pa.int64()), ("class", pa.string()),
                      ("score", f32)] + [(c, f32) for c in ("x", "y", "z", "dx", "dy", "dz", "yaw", "vx", "vy")])


def _frame_schema():
    import pyarrow as pa

    f64 = pa.float64()
    return pa.schema([("frame_index", pa.int64()), ("token", pa.string()), ("timestamp", f64),
                      ("model", pa.string()), ("has_prediction", pa.bool_()), ("has_detections", pa.bool_()),
                      ("num_boxes", pa.int32()), ("has_plan", pa.bool_()), ("plan_poses", pa.list_(pa.list_(f64, 3))),
                      ("plan_times", pa.list_(f64)), ("plan_candidate_scores", pa.list_(pa.float32())),
                      ("plan_missing", pa.list_(pa.string())), ("num_gaussians", pa.int32())])


class PredictionTable(Sink):
    """Predicted boxes to parquet: ``path`` has one row per box, ``frames_path`` one row per frame.

    Box rows: ``frame_index, token, timestamp, model, box_index, label, class, score, x, y, z, dx, dy,
    dz, yaw, vx, vy`` (ego frame, mmdet3d LiDAR convention: bottom centre; ``vx, vy`` NaN for 7-dim
    boxes). Frame rows: ``frame_index, token, timestamp, model, has_prediction, has_detections, num_boxes``
    -- every frame the sink saw, including those with zero boxes or no prediction -- and a planner's
    output: ``has_plan``, ``plan_poses [T][3]`` (x, y, heading; ego frame), ``plan_times [T]`` (s ahead),
    ``plan_candidate_scores [K]``, ``plan_missing`` (the sensors it planned without) and
    ``num_gaussians`` (null without a plan / Gaussians). ``frames_path`` defaults to
    ``<stem>_frames.parquet`` next to ``path``. Both are written on ``close()``, atomically.
    """

    def __init__(self, path: str | Path, frames_path: str | Path | None = None) -> None:
        self.path = Path(path)
        self.frames_path = Path(frames_path) if frames_path is not None else self.path.with_name(
            f"{self.path.stem}_frames{self.path.suffix or '.parquet'}")
        if self.frames_path == self.path:
            raise ValueError(f"PredictionTable: frames_path and path are the same file {self.path}")
        self._boxes: dict[str, list] = {c: [] for c in BOX_COLUMNS}
        self._frames: dict[str, list] = {c: [] for c in FRAME_COLUMNS}
        self._result: dict[str, Any] | None = None

    def __call__(self, item: Any) -> None:
        if self._result is not None:
            raise RuntimeError(f"PredictionTable({self.path}): already closed")
        it = as_sink_item(item)
        frame, pred = it.frame, it.prediction
        index = len(self._frames["token"])
        model = pred.model if pred is not None else None
        dets = pred.detections if pred is not None else None
        out = pred.plan if pred is not None else None
        n = len(dets) if dets is not None else 0
        plan = out.plan if out is not None else None
        row = (index, frame.token, frame.timestamp, model, pred is not None, dets is not None, n, out is not None,
               plan.trajectory.poses.tolist() if plan else None, plan.trajectory.timestamps.tolist() if plan else None,
               np.asarray(plan.scores).tolist() if plan and plan.scores is not None else None,
               list(out.missing) if out else None,
               len(out.gaussians) if out and out.gaussians is not None else None)
        for k, v in zip(FRAME_COLUMNS, row):
            self._frames[k].append(v)
        if n == 0:
            return
        boxes, t = pred.detections.boxes, pred.detections.boxes.tensor  # [n, 7|9]
        vel = t[:, 7:9] if t.shape[1] == 9 else np.full((n, 2), np.nan, np.float32)
        cols = {
            "frame_index": [index] * n, "token": [frame.token] * n, "timestamp": [frame.timestamp] * n,
            "model": [model] * n, "box_index": list(range(n)), "label": boxes.labels.tolist(),
            "class": boxes.names, "score": pred.detections.scores.tolist(),
            **{c: t[:, j].tolist() for j, c in enumerate(("x", "y", "z", "dx", "dy", "dz", "yaw"))},
            "vx": vel[:, 0].tolist(), "vy": vel[:, 1].tolist(),
        }
        for k, v in cols.items():
            self._boxes[k].extend(v)

    @staticmethod
    def _write(columns: dict[str, list], schema, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(path)
        try:
            pq.write_table(pa.Table.from_pydict(columns, schema=schema), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> dict[str, Any]:
        if self._result is None:
            self._write(self._boxes, _box_schema(), self.path)
            self._write(self._frames, _frame_schema(), self.frames_path)
            nb = self._frames["num_boxes"]
            self._result = {"path": str(self.path), "frames_path": str(self.frames_path), "frames": len(nb),
                            "boxes": len(self._boxes["token"]), "frames_without_boxes": sum(1 for n in nb if n == 0),
                            "plans": sum(self._frames["has_plan"])}
        return self._result

    def abort(self) -> None:
        if self._result is None:
            self._result = {"path": None, "frames_path": None, "frames": len(self._frames["token"]),
                            "boxes": len(self._boxes["token"]), "plans": sum(self._frames["has_plan"]), "aborted": True}


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(token: str) -> str:
    """A frame token as a file name: characters other than ``[A-Za-z0-9._-]`` become ``_``."""
    name = _UNSAFE.sub("_", token).lstrip(".")
    return name or "frame"


class PngSink(Sink):
    """BEV PNGs (``perception.viz.bev.render_bev``: ego-frame points, predicted boxes, scores, a planner's
    Gaussians and plan) in ``dir``.

    One ``<token>.png`` every ``every`` frames (frame 0, every, 2*every, ...); tokens are made file-safe
    with :func:`safe_name`, and a name already written in this run gets ``-<frame_index>`` appended.
    A frame without LiDAR is drawn with its boxes only. ``render_kwargs`` go to ``render_bev``.
    """

    def __init__(self, dir: str | Path, every: int = 1, **render_kwargs: Any) -> None:
        if every < 1:
            raise ValueError(f"PngSink: every must be >= 1, got {every}")
        self.dir = Path(dir)
        self.every = every
        self.render_kwargs = render_kwargs
        self.frames = 0
        self.paths: list[Path] = []
        self._names: set[str] = set()
        self._result: dict[str, Any] | None = None

    def __call__(self, item: Any) -> None:
        from PIL import Image

        from perception.viz.bev import render_bev

        if self._result is not None:
            raise RuntimeError(f"PngSink({self.dir}): already closed")
        it = as_sink_item(item)
        index, self.frames = self.frames, self.frames + 1
        if index % self.every:
            return
        frame, pred = it.frame, it.prediction
        points = frame.points_in_ego() if frame.lidar else np.zeros((0, 3), np.float32)  # [N, C]
        dets = pred.detections if pred is not None else None
        out = pred.plan if pred is not None else None
        img = render_bev(points, dets.boxes if dets is not None else None,
                         scores=dets.scores if dets is not None else None,
                         gaussians=out.gaussians if out is not None else None,
                         plan=out.plan if out is not None else None, **self.render_kwargs)  # [H, W, 3]
        name = safe_name(frame.token)
        if name in self._names:
            name = f"{name}-{index}"
        self._names.add(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}.png"
        tmp = _tmp_path(path)
        try:
            Image.fromarray(img).save(tmp, format="PNG")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.paths.append(path)

    def close(self) -> dict[str, Any]:
        if self._result is None:
            self._result = {"dir": str(self.dir), "frames": self.frames, "written": len(self.paths),
                            "skipped": self.frames - len(self.paths)}
        return self._result


# --------------------------------------------------------------------------------------------
# MCAP
# --------------------------------------------------------------------------------------------


class McapSink(Sink):
    """Every frame into one MCAP file for Foxglove Studio (see :mod:`perception.viz.mcap_writer`).

    Writes the frame's points, cameras and ego pose, the prediction's boxes on ``/detections``, its plan
    on ``/plan`` and Gaussians on ``/gaussians``, its depth maps on ``/depth/<camera>`` and, when the
    item has ground truth, its boxes on ``/ground_truth``.
    """

    def __init__(self, path: str | Path, **writer_kwargs: Any) -> None:
        from perception.viz.mcap_writer import McapWriter

        self.writer = McapWriter(path, **writer_kwargs)

    def __call__(self, item: Any) -> None:
        it = as_sink_item(item)
        pred = it.prediction
        self.writer.write_frame(it.frame, pred.detections if pred is not None else None,
                                it.targets.boxes if it.targets is not None else None,
                                model=pred.model if pred is not None else "",
                                plan=pred.plan if pred is not None else None,
                                depth=getattr(pred, "depth", None))

    def close(self) -> dict[str, Any]:
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


# --------------------------------------------------------------------------------------------
# several at once
# --------------------------------------------------------------------------------------------


class MultiSink(Sink):
    """Calls each sink in order; ``close()`` closes all of them (even when one fails, then re-raises).

    ``close()`` returns ``{name: sink.close()}`` with names from the class (``PredictionTable``, ...),
    suffixed ``#2``, ``#3`` for repeats.
    """

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks
        self.names: list[str] = []
        for s in sinks:
            base = type(s).__name__
            name, k = base, 1
            while name in self.names:
                k += 1
                name = f"{base}#{k}"
            self.names.append(name)
        self._result: dict[str, Any] | None = None

    def __call__(self, item: Any) -> None:
        it = as_sink_item(item)
        for s in self.sinks:
            s(it)

    def close(self) -> dict[str, Any]:
        if self._result is None:
            out: dict[str, Any] = {}
            first_error: BaseException | None = None
            for name, s in zip(self.names, self.sinks):
                try:
                    out[name] = s.close()
                except BaseException as e:  # noqa: BLE001 - close the others, then re-raise
                    out[name] = {"error": f"{type(e).__name__}: {e}"}
                    first_error = first_error or e
            self._result = out
            if first_error is not None:
                raise first_error
        return self._result

    def abort(self) -> None:
        for s in self.sinks:
            getattr(s, "abort", lambda: None)()
