"""The model stage: one ``Model`` interface in front of every trained model, for the pipeline's actors.

``ModelStage(config, checkpoint)`` builds the model an mmengine config describes (the same file
``tools/train.py`` trains with), loads its weights through the safe loader (``.pth`` weights-only
with mmengine's allowlist, or ``.safetensors`` checked against its manifest; wrong shapes are an
error), and answers ``predict(frames) -> list[FramePrediction]`` in eval mode without gradients.
As a stage (``__call__``) it takes one ``Frame`` or ``Preprocessed`` item.

Multi-frame models (MSF) read earlier sweeps from ``Frame.sweeps``. A recorded dataset fills them;
a live stream does not, so the stage keeps the last frames it saw and attaches them itself
(:func:`perception.data.dataset.with_sweeps`, aligned through the ego poses) when a frame comes
without sweeps. A frame older than the last one, or a jump of more than ``max_gap`` seconds, starts
the history afresh (counted in ``history_resets``): stale or reordered sweeps never reach a model.
Weight paths a config uses only to initialise training (``rpn_checkpoint``) are dropped here: the
checkpoint given holds every weight.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from perception.structures import Detections, Frame, Sample


@dataclass(frozen=True)
class FramePrediction:
    """A model's output for one frame: ``detections`` in the ego frame at ``timestamp``."""

    token: str
    timestamp: float
    model: str
    detections: Detections


def build_model(cfg_model: dict) -> torch.nn.Module:
    """Instantiate ``cfg.model`` (``type`` is the class itself in our pure-Python configs)."""
    spec = dict(cfg_model)
    cls = spec.pop("type")
    if isinstance(cls, str):
        raise TypeError(f"model type {cls!r} is a string; configs import the class and pass it as type")
    return cls(**spec)


def _frame(item: Any) -> Frame:
    frame = getattr(item, "frame", item)
    if not isinstance(frame, Frame):
        raise TypeError(f"ModelStage: expected a Frame or an item with .frame, got {type(item).__name__}")
    return frame


class ModelStage:
    """``predict(frames)`` / ``__call__(item)`` for the model of ``config`` with the weights in ``checkpoint``."""

    def __init__(self, config: str | Path, checkpoint: str | Path, device: str = "cpu", unsafe_load: bool = False,
                 max_gap: float = 0.5) -> None:
        from mmengine.config import Config

        from perception.engine.checkpoint import CheckpointError, load_checkpoint, state_dict_shape_mismatches

        cfg = Config.fromfile(str(config))
        spec = dict(cfg.model)
        if "rpn_checkpoint" in spec:
            spec["rpn_checkpoint"] = None
        self.model = build_model(spec)
        state = load_checkpoint(checkpoint, trust=unsafe_load)
        state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()}
        bad = state_dict_shape_mismatches(self.model.state_dict(), state)
        if bad:
            raise CheckpointError(f"{checkpoint}: tensors do not fit {type(self.model).__name__}:\n  " + "\n  ".join(bad))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{checkpoint}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        self.model.to(device).eval()
        self.name = f"model:{type(self.model).__name__}"
        pre = self.model.data_preprocessor
        self.num_history = max(getattr(pre, "sweeps", 0), getattr(pre, "history", 1) - 1)
        self.max_gap = float(max_gap)
        self._past: deque[Frame] = deque(maxlen=max(self.num_history, 1))
        self.history_resets = 0

    def _with_history(self, frame: Frame) -> Frame:
        """``frame`` with the stage's remembered earlier frames as sweeps, when the model wants them."""
        if not self.num_history or frame.sweeps or frame.ego_pose is None or len(frame.lidar) != 1:
            return frame
        from perception.data.dataset import with_sweeps

        if self._past and not 0 < frame.timestamp - self._past[-1].timestamp <= self.max_gap:
            self._past.clear()
            self.history_resets += 1
        past = [f for f in reversed(self._past) if list(f.lidar) == list(frame.lidar) and f.ego_pose is not None]
        self._past.append(frame)  # without sweeps: what is kept never nests
        return with_sweeps(Sample(frame), past).frame if past else frame

    @torch.no_grad()
    def predict(self, frames: Sequence[Frame]) -> list[FramePrediction]:
        frames = [self._with_history(f) for f in frames]
        data = self.model.data_preprocessor([Sample(f) for f in frames])
        dets = self.model(**data, mode="predict")
        return [FramePrediction(f.token, f.timestamp, type(self.model).__name__, d) for f, d in zip(frames, dets)]

    def __call__(self, item: Any) -> FramePrediction:
        return self.predict([_frame(item)])[0]
