"""CenterPointRPN: MSF's single-frame stage — voxel CenterPoint on the current sweep.

He et al., "MSF: Motion-guided Sequential Fusion for Efficient 3D Object Detection from Point Cloud
Sequences" (CVPR 2023) start from CenterPoint proposals on the current frame (Yin, Zhou & Krähenbühl,
CVPR 2021), with velocities that MSF uses to propagate each proposal back into past frames. This
module is that region-proposal network; the MSF head consumes ``forward(..., mode="tensor")``.

Pipeline (``B`` frames, :class:`VoxelGrid` of ``X x Y x Z`` voxels, total stride ``S``):

- :class:`PointPreprocessor`: ``list[Sample]`` → :class:`PointBatch`: each frame's points in the ego
  frame, columns ``point_fields``, cropped to the grid (non-finite and outside points counted);
- :class:`MeanVFE`: ``feats [M, C]``, ``coords [M, 4]`` (b, z, y, x);
- :class:`SparseEncoder`: → ``[B, C_e * D, X/8, Y/8]``;
- :class:`SecondBackbone` + :class:`SecondFPN`: → ``bev [B, C_n, X/S, Y/S]``;
- :class:`CenterHead`: → ``heatmap [B, K, X/S, Y/S]``, ``regression [B, 8|10, X/S, Y/S]``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mmengine.model import BaseDataPreprocessor, BaseModel

from perception.geometry.grid import VoxelGrid
from perception.models.backbones.bev_backbone import SecondBackbone, SecondFPN
from perception.models.backbones.sparse_encoder import SparseEncoder
from perception.models.backbones.vfe import MeanVFE, as_voxel_grid, grid_range
from perception.models.msf.center_head import CenterHead
from perception.ops.voxelize import dynamic_voxelize
from perception.structures import Detections, Frame, PointCloud, Sample, Targets

__all__ = ["CenterPointRPN", "PointBatch", "PointPreprocessor", "RpnOutput"]


@dataclass
class PointBatch:
    """Model input, per frame ``b`` of the batch.

    ``points[b] [N_b, C]`` float32: the RPN's input, the current sweep and up to ``sweeps`` earlier
    ones stacked (ego frame, inside the grid), columns named by ``fields``. ``history[b]`` the same
    points per time step, ``history[b][0]`` the current sweep, ``[t]`` the ``t``-th earlier one (as
    many as the frame has, up to the preprocessor's ``history``): what MSF's head pools from.
    ``time_lags[b][t]`` seconds between the current sweep and step ``t``.
    """

    points: list[torch.Tensor]
    fields: tuple[str, ...]
    frames: list[Frame]
    n_nonfinite: list[int]  # per frame: points with a non-finite x, y or z, left out (all sweeps)
    n_outside: list[int]  # per frame: points outside the voxel grid, left out (all sweeps)
    history: list[list[torch.Tensor]] | None = None
    time_lags: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class RpnOutput:
    """``forward(mode="tensor")``: the BEV features the heads see and the heads' raw outputs.

    ``bev [B, C, h, w]``, ``heatmap [B, K, h, w]`` (logits), ``regression [B, R, h, w]`` (channels
    ``CenterHead.fields``); cell ``(i, j)`` lies at ``origin + ((i, j) + 0.5) * cell`` metres.
    """

    bev: torch.Tensor
    heatmap: torch.Tensor
    regression: torch.Tensor
    origin: tuple[float, float]
    cell: tuple[float, float]


class PointPreprocessor(BaseDataPreprocessor):
    """``list[Sample]`` → ``dict(inputs=PointBatch, data_samples=list[Targets | None])``.

    ``point_fields`` picks columns by name (x, y, z first); a field a frame's LiDAR lacks (intensity on
    some datasets) is a column of zeros, and ``time_lag`` is filled here: seconds between the current
    sweep and the one a point comes from (0 for the current sweep). ``sweeps`` earlier sweeps from
    ``Frame.sweeps`` join the current one as the RPN's input (fewer when the frame has fewer: the
    first frames of a sequence); ``history`` time steps are kept apart for a multi-frame head. The crop
    is the voxel ops' own rule (:func:`dynamic_voxelize`), so every kept point lands in a voxel.
    """

    def __init__(self, grid: VoxelGrid | dict, point_fields: Sequence[str] = ("x", "y", "z", "intensity"),
                 sweeps: int = 0, history: int = 1) -> None:
        super().__init__()
        self.grid = as_voxel_grid(grid)
        self.fields = tuple(point_fields)
        if self.fields[:3] != ("x", "y", "z"):
            raise ValueError(f"PointPreprocessor: point_fields must start with x, y, z, got {self.fields}")
        if sweeps < 0 or history < 1:
            raise ValueError(f"PointPreprocessor: need sweeps >= 0 and history >= 1, got {sweeps}, {history}")
        self.sweeps, self.history = int(sweeps), int(history)

    def crop_cloud(self, frame: Frame, cloud: PointCloud) -> tuple[torch.Tensor, int, int]:
        """One sweep's ``[N, C]`` points (ego frame) inside the grid, and its non-finite / outside counts."""
        pts = np.array(cloud.points, dtype=np.float32)
        pts[:, :3] = frame.calib.transform("ego", cloud.frame_id).apply(pts[:, :3].astype(np.float64))
        lag = np.float32(frame.timestamp - cloud.timestamp)
        cols = [pts[:, cloud.fields.index(f)] if f in cloud.fields and f != "time_lag"
                else np.full(len(pts), lag if f == "time_lag" else 0.0, np.float32) for f in self.fields]
        x = torch.from_numpy(np.stack(cols, 1).astype(np.float32)).reshape(len(pts), len(self.fields))  # [N, C]
        coors, n_bad, n_out = dynamic_voxelize(x[:, :3].contiguous(), self.grid.voxel_size, grid_range(self.grid),
                                               return_dropped=True)
        return x[coors[:, 0] >= 0], n_bad, n_out

    def crop(self, frame: Frame) -> tuple[list[torch.Tensor], list[float], int, int]:
        """Per time step (current first) the cropped points and time lags, and the summed drop counts."""
        clouds = list(frame.lidar.values())
        if not clouds:
            raise ValueError(f"PointPreprocessor ({frame.token}): no LiDAR in this frame (missing: {frame.missing})")
        if len(clouds) > 1 and frame.sweeps:
            raise ValueError(f"PointPreprocessor ({frame.token}): sweeps with {len(clouds)} LiDARs are ambiguous")
        now = [self.crop_cloud(frame, c) for c in clouds]  # a multi-LiDAR rig: all its LiDARs are step 0
        steps = [(torch.cat([q[0] for q in now]), sum(q[1] for q in now), sum(q[2] for q in now))]
        steps += [self.crop_cloud(frame, sw) for sw in frame.sweeps[: max(self.sweeps, self.history - 1)]]
        lags = [0.0] + [float(frame.timestamp - sw.timestamp) for sw in frame.sweeps[: len(steps) - 1]]
        if any(b < a for a, b in zip(lags, lags[1:])) or any(lag < 0 for lag in lags):
            raise ValueError(f"PointPreprocessor ({frame.token}): sweeps must be older than the frame and newest "
                             f"first; time lags {lags}")
        return [q[0] for q in steps], lags, sum(q[1] for q in steps), sum(q[2] for q in steps)

    def forward(self, data: list[Sample], training: bool = False) -> dict:
        if not data or not all(isinstance(s, Sample) for s in data):
            raise TypeError(f"PointPreprocessor: expected a non-empty list[Sample], got {type(data).__name__}")
        steps, lags, bad, out = zip(*(self.crop(s.frame) for s in data))
        points = [torch.cat(st[: self.sweeps + 1]).to(self.device) for st in steps]
        history = [[p.to(self.device) for p in st[: self.history]] for st in steps]
        batch = PointBatch(points, self.fields, [s.frame for s in data], list(bad), list(out), history,
                           [list(lg[: self.history]) for lg in lags])
        return {"inputs": batch, "data_samples": [s.targets for s in data]}


class CenterPointRPN(BaseModel):
    """Voxel CenterPoint: ``PointBatch`` → :class:`RpnOutput` / losses / ``list[Detections]``.

    ``encoder``, ``backbone``, ``neck`` and ``head`` are keyword dicts of :class:`SparseEncoder`,
    :class:`SecondBackbone`, :class:`SecondFPN` and :class:`CenterHead` (channel counts, strides and
    geometry that follow from the grid are filled in here). Defaults are the paper's widths.
    ``bn_momentum`` is every BatchNorm's momentum unless a sub-dict sets its own ``momentum``.
    """

    def __init__(self, grid: VoxelGrid | dict, classes: Sequence[str],
                 point_fields: Sequence[str] = ("x", "y", "z", "intensity"), with_velocity: bool = True,
                 encoder: dict | None = None, backbone: dict | None = None, neck: dict | None = None,
                 head: dict | None = None, bn_momentum: float = 0.01, sweeps: int = 0) -> None:
        super().__init__(data_preprocessor=PointPreprocessor(grid, point_fields, sweeps=sweeps))
        self.grid = as_voxel_grid(grid)
        self.classes = tuple(classes)
        self.point_fields = tuple(point_fields)
        bn = {"momentum": float(bn_momentum)}
        self.vfe = MeanVFE(self.grid, len(self.point_fields))
        self.encoder = SparseEncoder(len(self.point_fields), self.vfe.sparse_shape, **{**bn, **(encoder or {})})
        bb = {"out_channels": (128, 256), "layer_nums": (5, 5), "strides": (1, 2), **bn, **(backbone or {})}
        self.backbone = SecondBackbone(self.encoder.bev_channels, **bb)
        down = math.prod(self.backbone.strides)
        if any(n % down for n in self.encoder.bev_shape):  # the neck's up-sampled maps would not line up
            nx, ny, _ = self.grid.shape
            raise ValueError(f"CenterPointRPN: the grid's {nx} x {ny} voxels give a {self.encoder.bev_shape[0]} x "
                             f"{self.encoder.bev_shape[1]} BEV map after the sparse encoder (stride 8), which the "
                             f"backbone's strides {self.backbone.strides} need divisible by {down}: choose a range "
                             f"and voxel size whose x and y voxel counts are multiples of {8 * down}")
        nk = {"out_channels": (256, 256), "upsample_strides": (1, 2), **bn, **(neck or {})}
        self.neck = SecondFPN(self.backbone.out_channels, self.backbone.strides, **nk)
        self.stride = self.encoder.stride * self.neck.stride
        vx, vy, _ = self.grid.voxel_size
        self.head = CenterHead(self.neck.out_channels, self.classes, (self.grid.x_min, self.grid.y_min),
                               (vx * self.stride, vy * self.stride), with_velocity=with_velocity, **{**bn, **(head or {})})

    @property
    def with_velocity(self) -> bool:
        return self.head.with_velocity

    def extract(self, inputs: PointBatch) -> RpnOutput:
        feats, coords = self.vfe(inputs.points)  # [M, C], [M, 4]
        x = self.encoder(feats, coords, len(inputs))  # [B, C_e * D, X/8, Y/8]
        bev = self.neck(self.backbone(x))  # [B, C_n, X/S, Y/S]
        heat, reg = self.head(bev)
        return RpnOutput(bev, heat, reg, self.head.origin, self.head.cell)

    def forward(self, inputs: PointBatch, data_samples: list[Targets | None] | None = None, mode: str = "tensor"):
        if mode not in ("tensor", "loss", "predict"):
            raise ValueError(f"CenterPointRPN: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")
        if mode == "loss" and (data_samples is None or any(t is None for t in data_samples)):
            raise ValueError("CenterPointRPN.loss: every sample needs targets")
        out = self.extract(inputs)
        if mode == "tensor":
            return out
        if mode == "loss":
            return self.head.loss(out.heatmap, out.regression, data_samples)
        return self.decode(out)

    def decode(self, out: RpnOutput) -> list[Detections]:
        """Proposals: one :class:`Detections` per frame (``Boxes3D [N, 9]`` with velocity, else ``[N, 7]``)."""
        return self.head.decode(out.heatmap, out.regression)
