"""PFDepth's inputs: the views of a frame, resized, with the geometry each needs, from its own camera model.

Every view keeps its own camera model (pinhole, MEI, Kannala-Brandt, WoodScape radial polynomial)
and extrinsic; nothing is undistorted or reprojected. Per view this module computes, once per
(camera, extrinsic, size) and cached:

* **lifting**: every voxel centre of the volume moved into the camera frame and projected through
  the camera's own ``project`` → normalised image coordinates ``[N, 2]``, the valid-FOV mask ``[N]``
  (the model's field of view *and* inside the image) and the voxel's range from the camera ``[N]``;
* **rendering**: the unit ray of every feature-map pixel (stride ``stride``) from ``unproject``, in
  the ego frame ``[h, w, 3]`` and the camera frame, and which of them are valid;
* **output**: the full-resolution valid-FOV mask ``[H, W]`` and the rays' z component (a pinhole's
  depth is z = range * ray_z, a fisheye's is the range itself: the synthetic world's convention).

Views are resized through :func:`perception.pipeline.camera.scale_camera` (rescaled intrinsics, or
:class:`~perception.geometry.cameras.ResizedCamera` for WoodScape's radial polynomial).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from perception.geometry.camera_base import CameraModel
from perception.geometry.cameras import PinholeCamera, ResizedCamera
from perception.geometry.grid import VoxelGrid
from perception.pipeline.camera import IMAGENET_MEAN, IMAGENET_STD, scale_camera
from perception.structures import CameraImage, Frame

PINHOLE, FISHEYE = "pinhole", "fisheye"


def view_type(model: CameraModel) -> str:
    """``"pinhole"`` for :class:`PinholeCamera` (its depth is z), ``"fisheye"`` for every other model (range)."""
    base = model.base if isinstance(model, ResizedCamera) else model
    return PINHOLE if isinstance(base, PinholeCamera) else FISHEYE


@dataclass(frozen=True)
class ViewGeometry:
    """Geometry of one view at one size (numpy, float32; see the module docstring). ``N = X * Y * Z``."""

    lift_grid: np.ndarray   # [N, 2] normalised image coordinates (grid_sample, align_corners=False)
    lift_valid: np.ndarray  # [N] bool: in the field of view and the image
    lift_range: np.ndarray  # [N] metres from the camera centre
    origin: np.ndarray      # [3] camera centre, ego frame
    rays_ego: np.ndarray    # [h, w, 3] unit rays of the feature pixels, ego frame
    rays_cam: np.ndarray    # [h, w, 3] the same, camera frame
    ray_valid: np.ndarray   # [h, w] bool
    fov: np.ndarray         # [H, W] bool: full-resolution pixels with a valid ray
    ray_z: np.ndarray       # [H, W] camera-frame z of each full-resolution pixel's unit ray


def _pixel_rays(model: CameraModel, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rays ``[H/step, W/step, 3]`` through the centres of ``step x step`` cells, and their validity."""
    h, w = model.height // step, model.width // step
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    uv = np.stack([u * step + (step - 1) / 2, v * step + (step - 1) / 2], -1)
    rays, ok = model.unproject(uv)
    return rays.astype(np.float32), np.asarray(ok, bool)


def compute_geometry(model: CameraModel, ego_from_cam: np.ndarray, grid: VoxelGrid, stride: int) -> ViewGeometry:
    centres = grid.cell_centers().reshape(-1, 3)                      # [N, 3] ego
    cam_from_ego = np.linalg.inv(ego_from_cam)
    pc = centres @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]       # [N, 3] camera frame
    uv, ok = model.project(pc)
    grid_uv = np.stack([(uv[:, 0] + 0.5) / model.width, (uv[:, 1] + 0.5) / model.height], -1) * 2 - 1
    rays_cam, ray_ok = _pixel_rays(model, stride)
    full_rays, fov = _pixel_rays(model, 1)
    rays_ego = rays_cam @ ego_from_cam[:3, :3].T.astype(np.float32)
    return ViewGeometry(grid_uv.astype(np.float32), np.asarray(ok, bool), np.linalg.norm(pc, axis=1).astype(np.float32),
                        ego_from_cam[:3, 3].astype(np.float32), rays_ego, rays_cam, ray_ok, fov,
                        np.where(fov, full_rays[..., 2], 1.0).astype(np.float32))


class GeometryCache:
    """``compute_geometry`` memoised on (camera model, extrinsic, grid, stride); at most ``size`` entries."""

    def __init__(self, size: int = 32) -> None:
        self.size, self._cache = size, OrderedDict()

    def __call__(self, model: CameraModel, ego_from_cam: np.ndarray, grid: VoxelGrid, stride: int) -> ViewGeometry:
        key = (repr(model), np.asarray(ego_from_cam, np.float64).tobytes(), repr(grid), stride)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        geo = compute_geometry(model, np.asarray(ego_from_cam, np.float64), grid, stride)
        self._cache[key] = geo
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return geo


@dataclass
class ViewBatch:
    """One view slot over a batch of ``B`` frames, all at one size ``H x W`` (feature maps ``h x w``).

    ``image`` is zero and ``has_image`` false where a frame lacks the camera but its calibration has it
    (its depth is still rendered from the volume the other views built).
    """

    name: str
    kind: str                       # "pinhole" | "fisheye"
    image: torch.Tensor             # [B, 3, H, W] normalised
    has_image: torch.Tensor         # [B] bool
    lift_grid: torch.Tensor         # [B, N, 2]
    lift_valid: torch.Tensor        # [B, N] bool
    lift_range: torch.Tensor        # [B, N]
    origin: torch.Tensor            # [B, 3]
    rays_ego: torch.Tensor          # [B, h, w, 3]
    rays_cam: torch.Tensor          # [B, h, w, 3]
    ray_valid: torch.Tensor         # [B, h, w] bool
    fov: torch.Tensor               # [B, H, W] bool
    ray_z: torch.Tensor             # [B, H, W]

    def to(self, device) -> "ViewBatch":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclass
class DepthInputs:
    """What PFDepth sees of ``B`` frames: one :class:`ViewBatch` per view slot, and the frames' tokens."""

    views: list[ViewBatch]
    tokens: list[str]
    timestamps: list[float]

    def to(self, device) -> "DepthInputs":
        return DepthInputs([v.to(device) for v in self.views], self.tokens, self.timestamps)


def _image_tensor(img: CameraImage, size: tuple[int, int]) -> np.ndarray:
    import cv2

    image = img.image
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"PFDepth: camera {img.frame_id}: expected an [H, W, 3] image, got shape {image.shape}")
    if (image.shape[1], image.shape[0]) != size:
        shrink = size[0] < image.shape[1] and size[1] < image.shape[0]
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = (image.astype(np.float32) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return x.transpose(2, 0, 1)


def build_inputs(frames: Sequence[Frame], cameras: Sequence[str], sizes: dict[str, tuple[int, int]], grid: VoxelGrid,
                 stride: int, cache: GeometryCache) -> DepthInputs:
    """``frames`` → :class:`DepthInputs` with one slot per name in ``cameras``.

    ``sizes``: ``(W, H)`` per view type. A camera the frame's calibration lacks is an error naming it;
    one the calibration has but the frame does not (``Frame.missing``) gets no image and is rendered
    from the volume. Non-finite pixels are not possible in uint8 images; wrong shapes are errors.
    """
    if not frames:
        raise ValueError("PFDepth: no frames")
    views = []
    for name in cameras:
        models = []
        for f in frames:
            model = f.cameras[name].camera if name in f.cameras else f.calib.cameras.get(name)
            if model is None:
                raise ValueError(f"PFDepth: frame {f.token} has no camera {name!r} (neither an image nor a calibration); "
                                 f"it has {sorted(f.calib.cameras)}")
            models.append(model)
        kind = view_type(models[0])
        if any(view_type(m) != kind for m in models):
            raise ValueError(f"PFDepth: camera {name!r} is a pinhole in some frames and a fisheye in others")
        W, H = sizes[kind]
        imgs, has, geos = [], [], []
        for f, model in zip(frames, models):
            geos.append(cache(scale_camera(model, W, H), f.calib.ego_from_sensor[name].matrix, grid, stride))
            if name in f.cameras:
                imgs.append(_image_tensor(f.cameras[name], (W, H)))
                has.append(True)
            else:
                imgs.append(np.zeros((3, H, W), np.float32))
                has.append(False)

        def stack(attr: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([getattr(g, attr) for g in geos]))

        views.append(ViewBatch(name, kind, torch.from_numpy(np.stack(imgs)), torch.tensor(has),
                               stack("lift_grid"), stack("lift_valid"),
                               stack("lift_range"), stack("origin"), stack("rays_ego"), stack("rays_cam"),
                               stack("ray_valid"), stack("fov"), stack("ray_z")))
    return DepthInputs(views, [f.token for f in frames], [f.timestamp for f in frames])
