"""3D boxes, as ground truth or as detections, convertible to and from mmdet3d's boxes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.geometry import boxes as box_geometry
from perception.geometry.se3 import SE3


@dataclass(frozen=True)
class Boxes3D:
    """``tensor [N, 7|9]`` float32 in mmdet3d's LiDAR convention (see :mod:`perception.geometry.boxes`).

    ``labels [N]`` int64 index into ``class_names`` (-1 for a class outside the list);
    ``track_ids [N]`` int64 where known; ``frame_id`` names the frame the boxes live in.
    """

    tensor: np.ndarray  # [N, 7] or [N, 9] float32
    labels: np.ndarray  # [N] int64
    class_names: tuple[str, ...]
    frame_id: str = "ego"
    track_ids: np.ndarray | None = None  # [N] int64

    def __post_init__(self) -> None:
        t = np.asarray(self.tensor, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] not in (7, 9):
            raise ValueError(f"Boxes3D.tensor: expected [N, 7] or [N, 9], got shape {t.shape}")
        if not np.isfinite(t).all():
            raise ValueError(f"Boxes3D.tensor: {int((~np.isfinite(t)).any(1).sum())} boxes have non-finite values")
        if (t[:, 3:6] < 0).any():
            raise ValueError("Boxes3D.tensor: box dimensions dx, dy, dz must be non-negative")
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != t.shape[0]:
            raise ValueError(f"Boxes3D.labels: {labels.shape[0]} labels for {t.shape[0]} boxes")
        if len(labels) and (labels.max(initial=-1) >= len(self.class_names) or labels.min() < -1):
            raise ValueError(f"Boxes3D.labels: values must be in [-1, {len(self.class_names)}), got {np.unique(labels)}")
        object.__setattr__(self, "tensor", np.ascontiguousarray(t))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.track_ids is not None:
            ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if ids.shape[0] != t.shape[0]:
                raise ValueError(f"Boxes3D.track_ids: {ids.shape[0]} ids for {t.shape[0]} boxes")
            object.__setattr__(self, "track_ids", ids)

    @classmethod
    def empty(cls, class_names: tuple[str, ...], box_dim: int = 7, frame_id: str = "ego") -> "Boxes3D":
        return cls(np.zeros((0, box_dim), np.float32), np.zeros(0, np.int64), class_names, frame_id)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def bottom_centers(self) -> np.ndarray:  # [N, 3]
        return self.tensor[:, :3]

    @property
    def gravity_centers(self) -> np.ndarray:  # [N, 3]
        c = self.tensor[:, :3].copy()
        c[:, 2] += self.tensor[:, 5] / 2
        return c

    @property
    def dims(self) -> np.ndarray:  # [N, 3] dx, dy, dz
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> np.ndarray:  # [N]
        return self.tensor[:, 6]

    @property
    def velocity(self) -> np.ndarray | None:  # [N, 2] or None
        return self.tensor[:, 7:9] if self.tensor.shape[1] == 9 else None

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] if i >= 0 else "unknown" for i in self.labels]

    def corners(self) -> np.ndarray:  # [N, 8, 3]
        return box_geometry.box_corners(self.tensor)

    def points_in_boxes(self, points: np.ndarray) -> np.ndarray:
        """``points [M, >=3]`` in this frame → ``[M, N]`` bool."""
        return box_geometry.points_in_boxes(points, self.tensor)

    def select(self, index: np.ndarray) -> "Boxes3D":
        ids = None if self.track_ids is None else self.track_ids[index]
        return Boxes3D(self.tensor[index], self.labels[index], self.class_names, self.frame_id, ids)

    def transform(self, t: SE3, frame_id: str) -> "Boxes3D":
        """The same boxes expressed in another frame, ``t`` mapping this frame into ``frame_id``."""
        moved = box_geometry.transform_boxes(self.tensor, t.matrix)
        return Boxes3D(moved, self.labels, self.class_names, frame_id, self.track_ids)

    def to_mmdet3d(self):
        """As ``mmdet3d.structures.LiDARInstance3DBoxes`` (bit-exact; labels are kept here, not there)."""
        from mmdet3d.structures import LiDARInstance3DBoxes
        import torch

        return LiDARInstance3DBoxes(
            torch.from_numpy(self.tensor.copy()), box_dim=self.tensor.shape[1], with_yaw=True, origin=(0.5, 0.5, 0)
        )

    @classmethod
    def from_mmdet3d(cls, boxes, labels, class_names, frame_id: str = "ego", track_ids=None) -> "Boxes3D":
        """From ``LiDARInstance3DBoxes`` (float32 tensor kept bit-exact) plus labels."""
        t = boxes.tensor.detach().cpu().numpy()
        if t.shape[1] not in (7, 9):
            raise ValueError(f"Boxes3D.from_mmdet3d: box_dim must be 7 or 9, got {t.shape[1]}")
        return cls(t, np.asarray(labels), class_names, frame_id, track_ids)


@dataclass(frozen=True)
class Detections:
    """Model output: ``boxes`` with ``scores [N]`` float32 in [0, 1]."""

    boxes: Boxes3D
    scores: np.ndarray  # [N] float32

    def __post_init__(self) -> None:
        s = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if s.shape[0] != len(self.boxes):
            raise ValueError(f"Detections.scores: {s.shape[0]} scores for {len(self.boxes)} boxes")
        object.__setattr__(self, "scores", s)

    def __len__(self) -> int:
        return len(self.boxes)
