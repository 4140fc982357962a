"""The model stage: one ``Model`` interface in front of every trained model, for the pipeline's actors.

``ModelStage(config, checkpoint)`` builds the model an mmengine config describes (the same file
``tools/train.py`` trains with), loads its weights through the safe loader (``.pth`` weights-only
with mmengine's allowlist, or ``.safetensors`` checked against its manifest; wrong shapes are an
error), and answers ``predict(frames) -> list[FramePrediction]`` in eval mode without gradients.
As a stage (``__call__``) it takes one ``Frame`` or ``Preprocessed`` item.
"""
from __future__ import annotations

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

    def __init__(self, config: str | Path, checkpoint: str | Path, device: str = "cpu", unsafe_load: bool = False) -> None:
        from mmengine.config import Config

        from perception.engine.checkpoint import CheckpointError, load_checkpoint, state_dict_shape_mismatches

        cfg = Config.fromfile(str(config))
        self.model = build_model(cfg.model)
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

    @torch.no_grad()
    def predict(self, frames: Sequence[Frame]) -> list[FramePrediction]:
        data = self.model.data_preprocessor([Sample(f) for f in frames])
        dets = self.model(**data, mode="predict")
        return [FramePrediction(f.token, f.timestamp, type(self.model).__name__, d) for f, d in zip(frames, dets)]

    def __call__(self, item: Any) -> FramePrediction:
        return self.predict([_frame(item)])[0]
