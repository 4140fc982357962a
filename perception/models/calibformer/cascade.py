"""A cascade of CalibFormer networks, each refining the previous one's estimate over a narrower range.

LCCNet's scheme (Lv et al., "LCCNet: LiDAR and Camera Self-Calibration using Cost Volume Network",
CVPRW 2021: five networks for ranges from +-20 deg / 1.5 m down to +-1 deg / 0.1 m, each applied to the
previous one's output). Here: a first :class:`~.model.CalibFormer` for the full range, then networks
trained on what it leaves (a degree or two of rotation, the full translation): once the image no longer
moves by tens of pixels, the few-pixel parallax of a horizontal or forward offset is what the
correlations see.

Training trains one stage (``train_stage``) on the dataset's perturbations; the other stages are frozen.
``init_from`` (a checkpoint of one CalibFormer; a relative path not found from the working directory is
taken from the repository root, as the configs name checkpoints) starts every stage from those weights; a
stage that reads more input channels than the checkpoint's network (``intensity=True`` after a depth-only
network, or a displacement head fed by an added ``fine`` correlation) gets the extra channels' weights at zero,
so it starts as that network; the fine branch itself starts fresh.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from mmengine.model import BaseModel
from torch import nn

from perception.models.calibformer.data import CalibTarget
from perception.models.calibformer.model import CalibBatch, CalibFormer, CalibPrediction, CalibPreprocessor


class CalibCascade(BaseModel):
    """``stages``: the keyword arguments of each :class:`CalibFormer`, in the order they run; ``forward`` as
    :class:`CalibFormer`'s (``predict`` runs every stage, each over its own ``iterations``)."""

    def __init__(self, stages: Sequence[Mapping], train_stage: int = -1, init_from: str | None = None) -> None:
        super().__init__(data_preprocessor=CalibPreprocessor())
        if not stages:
            raise ValueError("CalibCascade: needs at least one stage")
        self.stages = nn.ModuleList(CalibFormer(**dict(s)) for s in stages)
        if not -len(self.stages) <= train_stage < len(self.stages):
            raise ValueError(f"CalibCascade.train_stage {train_stage}: there are {len(self.stages)} stages")
        self.train_stage = train_stage % len(self.stages)
        if init_from:
            from perception.engine.checkpoint import load_checkpoint

            path = checkpoint_path(init_from)
            state = load_checkpoint(path)["state_dict"]
            for stage in self.stages:
                missing, unexpected = stage.load_state_dict(_widened(state, stage.state_dict()), strict=False)
                new = [k for k in missing if not k.startswith("fine.")]  # only an added fine branch may be new
                if new or unexpected:
                    raise RuntimeError(f"CalibCascade.init_from {path}: missing {new[:5]}, unexpected {unexpected[:5]}")
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i == self.train_stage)

    @property
    def iterations(self) -> int:
        return sum(s.iterations for s in self.stages)

    @property
    def reads_intensity(self) -> bool:
        """Whether a stage reads the LiDAR points' intensities (the inputs must carry them)."""
        return any(s.reads_intensity for s in self.stages)

    def refine(self, batch: CalibBatch, iterations: int | None = None) -> torch.Tensor:
        """``[K+1, B, 4, 4]``: ``batch.init`` then the estimate after every iteration of every stage.
        ``iterations`` (optional) overrides the last stage's."""
        steps = [batch.init]
        for i, stage in enumerate(self.stages):
            k = iterations if iterations is not None and i == len(self.stages) - 1 else None
            steps += list(stage.refine(replace(batch, init=steps[-1]), k)[1:])
        return torch.stack(steps)

    def forward(self, inputs: CalibBatch, data_samples: list[CalibTarget | None] | None = None, mode: str = "tensor"):
        if mode == "loss":
            return self.stages[self.train_stage](inputs, data_samples, mode="loss")
        if mode == "predict":
            return self.predict(inputs)
        if mode == "tensor":
            return self.stages[0](inputs, mode="tensor")
        raise ValueError(f"CalibCascade: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    @torch.no_grad()
    def predict(self, batch: CalibBatch, iterations: int | None = None) -> list[CalibPrediction]:
        steps = self.refine(batch, iterations).cpu().numpy()  # [K+1, B, 4, 4]
        return [CalibPrediction(tok, steps[-1, b], steps[0, b], steps[:, b]) for b, tok in enumerate(batch.tokens)]


def checkpoint_path(path: str | Path) -> Path:
    """``path`` as given, or, when relative and not found from the working directory, from the repository root
    (as the configs name checkpoints)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else Path(__file__).resolve().parents[3] / p


def _widened(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` fitted to a network ``own``: a convolution weight ``[O, I, k, k]`` for which ``own`` has more input
    channels ``I' > I`` is zero-padded to ``[O, I', k, k]``; everything else is left for ``load_state_dict`` to check."""
    out = dict(state)
    for k, v in state.items():
        o = own.get(k)
        wider = o is not None and v.ndim == o.ndim == 4 and o.shape[1] > v.shape[1]
        if wider and (o.shape[0], *o.shape[2:]) == (v.shape[0], *v.shape[2:]):
            out[k] = torch.cat([v, v.new_zeros(v.shape[0], o.shape[1] - v.shape[1], *v.shape[2:])], 1)
    return out
