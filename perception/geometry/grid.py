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
