"""Regular grids over the ground plane (BEV) and the point-cloud range: defined once, passed down."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BevGrid:
    """A BEV grid over ``[x_min, x_max) x [y_min, y_max)`` metres (ego frame) at ``resolution`` m per cell.

    Row ``i`` runs along x, column ``j`` along y: cell ``(i, j)`` is centred at
    ``(x_min + (i + 0.5) res, y_min + (j + 0.5) res)``, so ``array[i, j]`` indexes like ``(x, y)``.
    """

    x_min: float = -50.0
    y_min: float = -50.0
    x_max: float = 50.0
    y_max: float = 50.0
    resolution: float = 0.5

    def __post_init__(self) -> None:
        if not (self.x_max > self.x_min and self.y_max > self.y_min and self.resolution > 0):
            raise ValueError(f"BevGrid: need x_max > x_min, y_max > y_min, resolution > 0, got {self}")

    @property
    def shape(self) -> tuple[int, int]:  # (nx, ny)
        return (int(round((self.x_max - self.x_min) / self.resolution)),
                int(round((self.y_max - self.y_min) / self.resolution)))

    def cell_centers(self) -> np.ndarray:
        """``[nx, ny, 2]`` ego-frame xy of every cell centre."""
        nx, ny = self.shape
        x = self.x_min + (np.arange(nx) + 0.5) * self.resolution
        y = self.y_min + (np.arange(ny) + 0.5) * self.resolution
        return np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1)

    def index(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``xy [N, 2]`` → ``(ij [N, 2] int64, inside [N] bool)``."""
        ij = np.floor((np.asarray(xy)[:, :2] - [self.x_min, self.y_min]) / self.resolution).astype(np.int64)
        nx, ny = self.shape
        return ij, (ij[:, 0] >= 0) & (ij[:, 0] < nx) & (ij[:, 1] >= 0) & (ij[:, 1] < ny)


@dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid over ``[x_min, x_max) x [y_min, y_max) x [z_min, z_max)`` metres (ego frame).

    ``voxel_size`` is one edge length for cubic voxels or ``(vx, vy, vz)``. Voxel ``(i, j, k)`` is
    centred at ``(x_min + (i + 0.5) vx, y_min + (j + 0.5) vy, z_min + (k + 0.5) vz)``, so
    ``array[i, j, k]`` indexes like ``(x, y, z)`` (the BevGrid convention, one axis more).
    """

    x_min: float = -50.0
    y_min: float = -50.0
    z_min: float = -3.0
    x_max: float = 50.0
    y_max: float = 50.0
    z_max: float = 5.0
    voxel_size: float | tuple[float, float, float] = 1.0

    def __post_init__(self) -> None:
        vs = self.voxel_size
        vs = (float(vs),) * 3 if isinstance(vs, (int, float)) else tuple(float(v) for v in vs)
        if len(vs) != 3:
            raise ValueError(f"VoxelGrid: voxel_size must be a number or 3 numbers, got {self.voxel_size!r}")
        object.__setattr__(self, "voxel_size", vs)
        if not (self.x_max > self.x_min and self.y_max > self.y_min and self.z_max > self.z_min
                and min(vs) > 0):
            raise ValueError(f"VoxelGrid: need max > min on every axis and voxel_size > 0, got {self}")

    @property
    def origin(self) -> tuple[float, float, float]:
        return (self.x_min, self.y_min, self.z_min)

    @property
    def shape(self) -> tuple[int, int, int]:  # (X, Y, Z)
        lo, hi = self.origin, (self.x_max, self.y_max, self.z_max)
        return tuple(int(round((h - lo_) / v)) for lo_, h, v in zip(lo, hi, self.voxel_size))

    def cell_centers(self) -> np.ndarray:
        """``[X, Y, Z, 3]`` ego-frame xyz of every voxel centre."""
        axes = [o + (np.arange(n) + 0.5) * v for o, n, v in zip(self.origin, self.shape, self.voxel_size)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def index(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``xyz [N, 3]`` → ``(ijk [N, 3] int64, inside [N] bool)``."""
        ijk = np.floor((np.asarray(xyz)[:, :3] - self.origin) / self.voxel_size).astype(np.int64)
        return ijk, np.all((ijk >= 0) & (ijk < self.shape), axis=1)


def as_grid(grid: BevGrid | dict) -> BevGrid:
    """Configs pass the grid as a plain dict (defined once in the config); code uses :class:`BevGrid`."""
    return grid if isinstance(grid, BevGrid) else BevGrid(**grid)
