"""Where the car is, and where it goes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.geometry.se3 import SE3


@dataclass(frozen=True)
class EgoPose:
    """``world_from_ego`` at ``timestamp`` (seconds)."""

    timestamp: float
    world_from_ego: SE3

    def __post_init__(self) -> None:
        if not np.isfinite(self.timestamp):
            raise ValueError(f"EgoPose.timestamp: must be finite, got {self.timestamp}")
        if not isinstance(self.world_from_ego, SE3):
            object.__setattr__(self, "world_from_ego", SE3(np.asarray(self.world_from_ego)))


@dataclass(frozen=True)
class Trajectory:
    """Future (or past) planar poses ``poses [T, 3]`` = ``(x, y, heading)`` in ``frame_id`` at ``timestamps [T]``.

    NAVSIM's convention is 8 poses at 2 Hz over 4 s, in the current ego frame.
    """

    poses: np.ndarray  # [T, 3] float64
    timestamps: np.ndarray  # [T] float64, strictly increasing, seconds (relative or absolute)
    frame_id: str = "ego"

    def __post_init__(self) -> None:
        p = np.asarray(self.poses, dtype=np.float64)
        t = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"Trajectory.poses: expected [T, 3] (x, y, heading), got shape {p.shape}")
        if t.shape[0] != p.shape[0]:
            raise ValueError(f"Trajectory.timestamps: {t.shape[0]} timestamps for {p.shape[0]} poses")
        if not (np.isfinite(p).all() and np.isfinite(t).all()):
            raise ValueError("Trajectory: poses and timestamps must be finite")
        if (np.diff(t) <= 0).any():
            raise ValueError(f"Trajectory.timestamps: must be strictly increasing, got {t}")
        object.__setattr__(self, "poses", p)
        object.__setattr__(self, "timestamps", t)

    def __len__(self) -> int:
        return self.poses.shape[0]

    @property
    def xy(self) -> np.ndarray:  # [T, 2]
        return self.poses[:, :2]

    @property
    def heading(self) -> np.ndarray:  # [T]
        return self.poses[:, 2]


@dataclass(frozen=True)
class Plan:
    """Planner output: the chosen ``trajectory`` and, optionally, the scored candidates ``[K]``."""

    trajectory: Trajectory
    candidates: tuple[Trajectory, ...] = ()
    scores: np.ndarray | None = None  # [K]

    def __post_init__(self) -> None:
        if self.scores is not None and len(np.asarray(self.scores)) != len(self.candidates):
            raise ValueError(f"Plan.scores: {len(self.scores)} scores for {len(self.candidates)} candidates")
