"""Per-camera depth."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class DepthMap:
    """``depth [H, W]`` float32 metres along the camera's z axis for ``camera``; 0 marks no depth.

    For fisheye cameras, ``kind="range"`` stores distance along the ray instead of z.
    """

    depth: np.ndarray  # [H, W] float32
    camera: str
    timestamp: float
    kind: str = "z"  # "z" or "range"

    def __post_init__(self) -> None:
        d = np.asarray(self.depth, dtype=np.float32)
        if d.ndim != 2:
            raise ValueError(f"DepthMap.depth ({self.camera}): expected [H, W], got shape {d.shape}")
        if not np.isfinite(d).all() or (d < 0).any():
            raise ValueError(f"DepthMap.depth ({self.camera}): values must be finite and >= 0 (0 = no depth)")
        if self.kind not in ("z", "range"):
            raise ValueError(f"DepthMap.kind: 'z' or 'range', got {self.kind!r}")
        object.__setattr__(self, "depth", d)

    @property
    def valid(self) -> np.ndarray:  # [H, W] bool
        return self.depth > 0


@dataclass(frozen=True)
class DepthOutput:
    """A depth model's output for one frame: a :class:`DepthMap` per camera (PFDepth).

    ``rendered_only``: cameras the frame had no image from (calibrated but missing), whose depth was
    rendered from what the other views saw. ``baseline``: a comparison model's maps for the same
    cameras (None when none ran). ``view_types``: ``"pinhole"`` or ``"fisheye"`` per camera.
    """

    maps: Mapping[str, DepthMap]
    rendered_only: tuple[str, ...] = ()
    baseline: Mapping[str, DepthMap] | None = None
    view_types: Mapping[str, str] = field(default_factory=dict)
