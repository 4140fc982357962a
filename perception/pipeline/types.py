"""Typed dataclasses that pass between the pipeline's preprocessing stages.

A :class:`~perception.structures.Frame` enters the stage chain; every stage returns a
:class:`Preprocessed` (the frame plus what the stages made of it), so later stages and the model
actors read typed fields, never string keys. Tensors are torch (the preprocessing output is what a
model consumes); the raw inputs stay numpy in the ``Frame``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch

from perception.geometry.camera_base import CameraModel
from perception.ops.voxelize import Voxels
from perception.structures import Frame


@dataclass(frozen=True)
class LidarCounts:
    """Where every LiDAR point of one frame went (summed over the rig's LiDARs). Nothing is dropped uncounted.

    Current sweeps: ``input == nonfinite + out_of_range + kept_current``.
    Past sweeps (multi-sweep accumulation): ``sweep_input == sweep_nonfinite + sweep_out_of_range + kept_sweeps``.
    Voxelization of the kept points: ``kept_current + kept_sweeps == in_voxels + voxel_nonfinite +
    voxel_out_of_range + voxel_over_capacity`` (``voxel_out_of_range`` catches the partial last cell a
    range that is not a multiple of the voxel size loses, see :mod:`perception.ops.voxelize`).
    ``uncompensated`` counts finite current points that could not be motion-compensated (no ego pose
    bracketing the sweep, e.g. the first frame of a stream); they are kept, moved rigidly with the
    calibration only.
    """

    input: int = 0
    nonfinite: int = 0
    out_of_range: int = 0
    kept_current: int = 0
    uncompensated: int = 0
    sweep_input: int = 0
    sweep_nonfinite: int = 0
    sweep_out_of_range: int = 0
    kept_sweeps: int = 0
    in_voxels: int = 0
    voxel_nonfinite: int = 0
    voxel_out_of_range: int = 0
    voxel_over_capacity: int = 0

    def __add__(self, other: "LidarCounts") -> "LidarCounts":
        a, b = asdict(self), asdict(other)
        return LidarCounts(**{k: a[k] + b[k] for k in a})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def check(self) -> None:
        """Raise ``AssertionError`` unless every point is accounted for."""
        assert self.input == self.nonfinite + self.out_of_range + self.kept_current, self
        assert self.sweep_input == self.sweep_nonfinite + self.sweep_out_of_range + self.kept_sweeps, self
        assert self.kept_current + self.kept_sweeps == (self.in_voxels + self.voxel_nonfinite
                                                        + self.voxel_out_of_range + self.voxel_over_capacity), self


@dataclass(frozen=True)
class LidarTensors:
    """LiDAR model input of one frame, in the ego frame at the frame's timestamp.

    ``points [N, C]`` float32 with columns ``fields`` (x, y, z, the configured features, then
    ``time_lag`` = frame time - sweep time in seconds, 0 for the current sweep: mmdet3d's
    ``LoadPointsFromMultiSweeps`` convention); current-sweep points first, then past sweeps newest
    first. ``voxels`` is :func:`perception.ops.voxelize.voxelize` of ``points``
    (``voxels [M, P, C]``, ``coords [M, 3]`` int32 ``(z, y, x)``, ``num_points [M]``).
    ``num_sweeps`` counts the sweeps merged (current included); ``motion_compensated`` is False when
    any current sweep could not be compensated (see ``counts.uncompensated``).
    """

    token: str
    timestamp: float
    points: torch.Tensor  # [N, C] float32
    fields: tuple[str, ...]
    voxels: Voxels
    counts: LidarCounts
    num_sweeps: int = 1
    motion_compensated: bool = True


@dataclass(frozen=True)
class CameraTensors:
    """Camera model input: ``image [3, H, W]`` float32, normalized ``(rgb - mean) / std``.

    ``camera`` is the model of the *output* image (undistorted and/or rescaled) when one can be
    built, else None; ``source_camera`` is the model the raw image was taken with. ``scale`` is
    ``(sx, sy)`` = output size / source size (pixel centres follow OpenCV: ``u' = (u + 0.5) sx - 0.5``).
    ``undistorted`` says whether distortion was removed (pinhole only; fisheyes pass through).
    """

    frame_id: str
    timestamp: float
    image: torch.Tensor  # [3, H, W] float32
    camera: CameraModel | None
    source_camera: CameraModel
    scale: tuple[float, float]
    undistorted: bool


@dataclass(frozen=True)
class Preprocessed:
    """What flows between stages: the synchronized ``frame`` and the stages' outputs so far."""

    frame: Frame
    lidar: LidarTensors | None = None
    cameras: Mapping[str, CameraTensors] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", MappingProxyType(dict(self.cameras)))

    @property
    def token(self) -> str:
        return self.frame.token


def as_preprocessed(item: Frame | Preprocessed) -> Preprocessed:
    """Stages accept a bare ``Frame`` (first stage) or a ``Preprocessed`` (later stages)."""
    if isinstance(item, Preprocessed):
        return item
    if isinstance(item, Frame):
        return Preprocessed(item)
    raise TypeError(f"expected a Frame or Preprocessed, got {type(item).__name__}")
