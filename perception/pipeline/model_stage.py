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
Weight paths a config uses only to initialise training (``rpn_checkpoint``) and a planner's anchor
recipe (``anchors``, a k-means over a dataset) are dropped here: the checkpoint given holds every
weight and buffer.

Model stages chain. A model with a ``plan`` method (GaussianFusion) is a planner, any other a
detector. Every prediction carries its stage's input frame (``FramePrediction.carried``, left out of
equality and repr, ignored by the sinks), so the next model stage runs on that frame: a planner after
a detector gets the detector's boxes as agent tokens (``detections=``) and returns one merged
prediction (the detector's boxes, its own plan, ``model="MSF+GaussianFusion"``). A planner's driving
command is an input, read from ``frame.meta["driving_command"]`` (None: unknown), as NAVSIM hands it
to its agents; ground truth never reaches a model. A model with a ``predict_depth`` method (PFDepth)
is a depth model: anywhere in the chain, it adds ``FramePrediction.depth`` and keeps what came before.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from perception.structures import Detections, Frame, PlanningOutput, Sample
from perception.structures.depth import DepthOutput

# anchors=dict(dataset=...) would run a k-means over a dataset; the checkpoint has them
INIT_ONLY_KEYS = ("rpn_checkpoint", "anchors")


@dataclass(frozen=True)
class FramePrediction:
    """The models' output for one frame, in the ego frame at ``timestamp``.

    ``detections`` from a detector (None when none ran), ``plan`` from a planner (None when none ran),
    ``depth`` from a depth model (per-camera depth maps; None when none ran);
    ``model`` names the models, in chain order (``"MSF+GaussianFusion"``). ``carried`` is the frame the
    models ran on, for a following model stage (None after the last one): not compared, not shown.
    """

    token: str
    timestamp: float
    model: str
    detections: Detections | None = None
    plan: PlanningOutput | None = None
    carried: Frame | None = field(default=None, compare=False, repr=False)
    depth: DepthOutput | None = None


def build_model(cfg_model: dict) -> torch.nn.Module:
    """Instantiate ``cfg.model`` (``type`` is the class itself in our pure-Python configs)."""
    spec = dict(cfg_model)
    cls = spec.pop("type")
    if isinstance(cls, str):
        raise TypeError(f"model type {cls!r} is a string; configs import the class and pass it as type")
    return cls(**spec)


def _frame(item: Any) -> Frame:
    frame = item.carried if isinstance(item, FramePrediction) else getattr(item, "frame", item)
    if not isinstance(frame, Frame):
        raise TypeError(f"ModelStage: expected a Frame, an item with .frame or a FramePrediction carrying its "
                        f"frame, got {type(item).__name__}" + (" without one" if isinstance(item, FramePrediction) else ""))
    return frame


class ModelStage:
    """``predict(frames)`` / ``__call__(item)`` for the model of ``config`` with the weights in ``checkpoint``.

    ``carry``: whether predictions carry their frame on to a following model stage (the last model
    stage of a chain sets it False, so the frame does not travel back to the driver).
    """

    def __init__(self, config: str | Path, checkpoint: str | Path, device: str = "cpu", unsafe_load: bool = False,
                 max_gap: float = 0.5, carry: bool = True) -> None:
        from mmengine.config import Config

        from perception.engine.checkpoint import (
            CheckpointError, load_checkpoint, load_weights, state_dict_shape_mismatches,
        )

        cfg = Config.fromfile(str(config))
        spec = dict(cfg.model)
        for key in INIT_ONLY_KEYS:
            if key in spec:
                spec[key] = None
        self.model = build_model(spec)
        state = load_checkpoint(checkpoint, trust=unsafe_load)
        state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()}
        bad = state_dict_shape_mismatches(self.model.state_dict(), state)
        if bad:
            raise CheckpointError(f"{checkpoint}: tensors do not fit {type(self.model).__name__}:\n  " + "\n  ".join(bad))
        missing, unexpected = load_weights(self.model, state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{checkpoint}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
        self.model.to(device).eval()
        self.name = f"model:{type(self.model).__name__}"
        self.is_planner = callable(getattr(self.model, "plan", None))
        self.is_depth = callable(getattr(self.model, "predict_depth", None))
        self.carry = bool(carry)
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
    def predict(self, frames: Sequence[Frame], detections: Sequence[Detections | None] | None = None
                ) -> list[FramePrediction]:
        """One prediction per frame. ``detections``: a detector's boxes per frame, a planner's agent tokens."""
        name = type(self.model).__name__
        kept = [f if self.carry else None for f in frames]
        if self.is_depth:
            outs = self.model.predict_depth(frames)
            return [FramePrediction(f.token, f.timestamp, name, None, None, c, depth=o) for f, o, c in zip(frames, outs, kept)]
        if self.is_planner:
            commands = [f.meta.get("driving_command") for f in frames]
            plans = self.model.plan(frames, commands, detections=detections)
            dets = detections if detections is not None else [None] * len(frames)
            return [FramePrediction(f.token, f.timestamp, name, d, p, c) for f, d, p, c in zip(frames, dets, plans, kept)]
        if detections is not None:
            raise ValueError(f"ModelStage({name}): a detector takes no detections")
        data = self.model.data_preprocessor([Sample(self._with_history(f)) for f in frames])
        dets = self.model(**data, mode="predict")
        return [FramePrediction(f.token, f.timestamp, name, d, None, c) for f, d, c in zip(frames, dets, kept)]

    def __call__(self, item: Any) -> FramePrediction:
        """A frame-bearing item → this model's prediction; a ``FramePrediction`` → the chain's merged one."""
        frame = _frame(item)
        if not isinstance(item, FramePrediction):
            return self.predict([frame])[0]
        if self.is_depth:  # adds depth maps to whatever the chain has so far
            pred = self.predict([frame])[0]
            return replace(item, model=f"{item.model}+{pred.model}", depth=pred.depth, carried=pred.carried)
        if item.plan is not None or (item.detections is not None and not self.is_planner):
            raise ValueError(f"ModelStage({type(self.model).__name__}) after {item.model}: its output would replace "
                             f"the earlier {'plan' if item.plan is not None else 'detections'}")
        pred = self.predict([frame], [item.detections] if self.is_planner else None)[0]
        return replace(pred, model=f"{item.model}+{pred.model}",
                       detections=pred.detections if pred.detections is not None else item.detections, depth=item.depth)
