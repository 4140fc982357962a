"""Camera preprocessing: undistort (pinhole), resize, normalize, to a float tensor ``[3, H, W]``.

Per camera of a frame:

1. **undistort** pinhole images with non-zero Brown-Conrady coefficients (``undistort=True``): every
   pixel of the ideal pinhole with the same ``fx, fy, cx, cy`` is projected through the distorted
   model and sampled bilinearly (``cv2.remap``). **Fisheye models** (MEI, Kannala-Brandt, WoodScape
   radial polynomial) **pass through untouched**: their distortion is the lens, and the models that
   consume them (PFDepth) are distortion-aware;
2. **resize** to ``size = (W, H)`` (``cv2.resize``, area filter when shrinking). The camera model is
   rescaled to match where its pixel mapping is affine (pinhole, Kannala-Brandt, MEI):
   ``f' = f s``, ``c' = (c + 0.5) s - 0.5`` (OpenCV pixel centres). WoodScape's radial polynomial is
   kept as is and ``CameraTensors.camera`` is None; ``CameraTensors.scale`` always records ``(sx, sy)``;
3. **normalize** ``(rgb - mean) / std`` per channel (mmdet3d's ImageNet defaults, in 0..255) to
   ``float32 [3, H, W]``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from perception.geometry.camera_base import CameraModel
from perception.geometry.cameras import KannalaBrandtCamera, MEICamera, PinholeCamera, ResizedCamera
from perception.pipeline.types import CameraTensors, Preprocessed, as_preprocessed
from perception.structures import CameraImage, Frame

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class CameraConfig:
    """``size``: output ``(W, H)``, None keeps each camera's size; ``mean``/``std`` per RGB channel in 0..255."""

    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    undistort: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"CameraConfig.size: (W, H) with W, H >= 1, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"CameraConfig: mean and std need 3 values, std > 0; got {self.mean}, {self.std}")


def scale_camera(model: CameraModel, width: int, height: int) -> CameraModel:
    """The model of the same camera imaged at ``width x height`` (exact for every model): rescaled
    intrinsics where the pixel map is affine, else :class:`~perception.geometry.cameras.ResizedCamera`."""
    if (width, height) == (model.width, model.height):
        return model
    sx, sy = width / model.width, height / model.height
    if isinstance(model, (PinholeCamera, KannalaBrandtCamera)):
        return dataclasses.replace(model, width=width, height=height, fx=model.fx * sx, fy=model.fy * sy,
                                   cx=(model.cx + 0.5) * sx - 0.5, cy=(model.cy + 0.5) * sy - 0.5)
    if isinstance(model, MEICamera):
        return dataclasses.replace(model, width=width, height=height, gamma1=model.gamma1 * sx,
                                   gamma2=model.gamma2 * sy, u0=(model.u0 + 0.5) * sx - 0.5,
                                   v0=(model.v0 + 0.5) * sy - 0.5)
    return ResizedCamera(width, height, model)


def undistort_pinhole(image: np.ndarray, model: PinholeCamera) -> tuple[np.ndarray, PinholeCamera]:
    """``image [H, W, 3]`` taken through ``model`` → the image of the distortion-free pinhole with the same K."""
    import cv2

    ideal = dataclasses.replace(model, k1=0.0, k2=0.0, p1=0.0, p2=0.0, k3=0.0)
    uv = model.pixel_grid()  # [H, W, 2]
    rays = np.concatenate([(uv - [model.cx, model.cy]) / [model.fx, model.fy], np.ones(uv.shape[:2] + (1,))], -1)
    src, valid = model.project(rays)  # [H, W, 2]: where each ideal pixel lies in the distorted image
    src = np.where(valid[..., None], src, -1e4).astype(np.float32)  # outside the lens: black
    out = cv2.remap(image, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, ideal


class CameraPreprocess:
    """``Frame | Preprocessed -> Preprocessed`` with ``cameras[name]`` set to a :class:`CameraTensors`."""

    def __init__(self, config: CameraConfig | None = None, cameras: tuple[str, ...] | None = None) -> None:
        """``cameras``: only these cameras (one actor per camera in the Ray pipeline); None: all of the frame's."""
        self.config = config or CameraConfig()
        self.cameras = None if cameras is None else tuple(cameras)
        self._mean = np.asarray(self.config.mean, np.float32)
        self._std = np.asarray(self.config.std, np.float32)

    def __call__(self, item: Frame | Preprocessed) -> Preprocessed:
        pre = as_preprocessed(item)
        cams = dict(pre.cameras)
        for name, img in pre.frame.cameras.items():
            if self.cameras is None or name in self.cameras:
                cams[name] = self.process(img)
        return Preprocessed(pre.frame, pre.lidar, cams)

    def process(self, img: CameraImage) -> CameraTensors:
        import cv2

        cfg = self.config
        image, model = img.image, img.camera
        undistorted = False
        if cfg.undistort and isinstance(model, PinholeCamera) and any(model.dist):
            image, model = undistort_pinhole(image, model)
            undistorted = True
        w, h = cfg.size if cfg.size is not None else (model.width, model.height)
        scale = (w / model.width, h / model.height)
        if (w, h) != (model.width, model.height):
            shrink = w < model.width and h < model.height
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            model = scale_camera(model, w, h)
        x = (image.astype(np.float32) - self._mean) / self._std  # [H, W, 3]
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # [3, H, W]
        return CameraTensors(img.frame_id, img.timestamp, tensor, model, img.camera, scale, undistorted)
