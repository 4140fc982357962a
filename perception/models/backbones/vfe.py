"""MeanVFE: dynamic voxelization, then the mean of each voxel's point features.

The voxel feature encoder of SECOND / CenterPoint's voxel models (Yan, Mao & Li, "SECOND", Sensors
2018; Yin, Zhou & Krähenbühl, "Center-based 3D Object Detection and Tracking", CVPR 2021), in its
dynamic form (Zhou et al., CoRL 2019): no cap on points per voxel, every in-range point counts.
Cells come from :func:`perception.ops.voxelize.dynamic_voxelize`, the means from
:func:`perception.ops.scatter.dynamic_scatter` (differentiable w.r.t. the point features).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perception.geometry.grid import VoxelGrid
from perception.ops.scatter import dynamic_scatter
from perception.ops.voxelize import dynamic_voxelize

__all__ = ["MeanVFE", "as_voxel_grid", "grid_range"]


def as_voxel_grid(grid: VoxelGrid | dict) -> VoxelGrid:
    """Configs pass the grid as a plain dict (defined once in the config); code uses :class:`VoxelGrid`."""
    return grid if isinstance(grid, VoxelGrid) else VoxelGrid(**grid)


def grid_range(grid: VoxelGrid) -> tuple[float, ...]:
    """``(x_min, y_min, z_min, x_max, y_max, z_max)``: the ``point_cloud_range`` of the voxel ops."""
    return (grid.x_min, grid.y_min, grid.z_min, grid.x_max, grid.y_max, grid.z_max)


class MeanVFE(nn.Module):
    """``points: list[[N_b, C]]`` (x, y, z first) → ``(feats [M, C], coords [M, 4] int32 (b, z, y, x))``.

    Every feature column is averaged (x, y, z, intensity, time lag ... whatever the caller passes).
    Non-finite and out-of-grid points are ignored (crop them first to count them). Voxels are ordered
    by ``(b, z, y, x)``. ``sparse_shape`` is the spconv spatial shape ``(Z, Y, X)``.
    """

    def __init__(self, grid: VoxelGrid | dict, in_channels: int = 4) -> None:
        super().__init__()
        self.grid = as_voxel_grid(grid)
        self.in_channels = int(in_channels)

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        X, Y, Z = self.grid.shape
        return Z, Y, X

    def forward(self, points: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(points):
            raise ValueError("MeanVFE: expected at least one point cloud")
        bad = [tuple(p.shape) for p in points if p.ndim != 2 or p.shape[1] != self.in_channels]
        if bad:
            raise ValueError(f"MeanVFE: expected [N, {self.in_channels}] point tensors, got shapes {bad}")
        nz = self.sparse_shape[0]
        pcr = grid_range(self.grid)
        coors = []
        for b, p in enumerate(points):
            c = dynamic_voxelize(p[:, :3].contiguous(), self.grid.voxel_size, pcr)  # [N_b, 3] (z, y, x)
            c[:, 0] = torch.where(c[:, 0] >= 0, c[:, 0] + b * nz, c[:, 0])  # batch folded into z
            coors.append(c)
        feats = torch.cat(list(points))  # [N, C]
        coors = torch.cat(coors)  # [N, 3]
        if not (coors[:, 0] >= 0).any():
            return feats.new_zeros(0, self.in_channels), torch.zeros(0, 4, dtype=torch.int32, device=feats.device)
        vfeats, vco, _ = dynamic_scatter(feats, coors, "mean")  # [M, C], [M, 3] sorted by (b, z, y, x)
        coords = torch.cat([vco[:, :1] // nz, vco[:, :1] % nz, vco[:, 1:]], 1).to(torch.int32)  # [M, 4]
        return vfeats, coords
