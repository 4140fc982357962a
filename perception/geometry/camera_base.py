"""The camera-model interface every model in :mod:`perception.geometry.cameras` implements.

A camera model maps points in the camera frame (OpenCV convention: x right, y down, z forward)
to pixels and pixels back to unit rays. Pixel coordinates follow OpenCV: the centre of the
top-left pixel is (0, 0). Methods take numpy arrays or torch tensors and return the same type.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from perception.geometry._array import Array, xp


@dataclass(frozen=True)
class CameraModel(ABC):
    """Base of all camera models. ``width``/``height`` are the image size in pixels."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"{type(self).__name__}: image size must be positive, got {self.width}x{self.height}")

    @abstractmethod
    def project(self, points_cam: Array) -> tuple[Array, Array]:
        """``points_cam [..., 3]`` → ``uv [..., 2]`` pixels and ``valid [...]`` bool.

        ``valid`` is true where the point lies inside the model's field of view *and* its pixel
        falls inside the image; ``uv`` is finite everywhere (garbage where not valid).
        """

    @abstractmethod
    def unproject(self, uv: Array) -> tuple[Array, Array]:
        """``uv [..., 2]`` pixels → unit rays ``[..., 3]`` in the camera frame and ``valid [...]`` bool."""

    def in_image(self, uv: Array) -> Array:
        """``uv [..., 2]`` → ``[...]`` bool: inside ``[-0.5, W-0.5) x [-0.5, H-0.5)``."""
        x = xp(uv)
        u, v = uv[..., 0], uv[..., 1]
        inside = x.logical_and(u >= -0.5, u < self.width - 0.5)
        return x.logical_and(inside, x.logical_and(v >= -0.5, v < self.height - 0.5))

    def pixel_grid(self, step: int = 1):
        """All pixel centres ``[H//step, W//step, 2]`` (float64 numpy), for round-trip checks and ray tables."""
        import numpy as np

        v, u = np.mgrid[0 : self.height : step, 0 : self.width : step].astype(np.float64)
        return np.stack([u, v], axis=-1)
