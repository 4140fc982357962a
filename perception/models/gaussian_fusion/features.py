"""NAVSIM-style planning inputs and targets, built from typed samples (inputs from the frame only).

Inputs (what the car sees), following NAVSIM's TransFuser agent (``transfuser_features.py``):

* the front cameras (``CAM_L0, CAM_F0, CAM_R0``), each resized to ``image_size`` and normalised; a
  camera the frame lacks is a zero image with ``camera_valid = False`` (never a crash);
* a LiDAR BEV histogram over ``±32 m`` (``lidar_grid``; 256×256 at 0.25 m in the paper): points per
  cell, clipped at ``HIST_MAX`` and scaled to [0, 1], one channel at or below ``SPLIT_HEIGHT`` (ground
  returns: the road's extent) and one above it up to ``MAX_HEIGHT`` (obstacles). No LiDAR: zeros and
  ``lidar_valid = False``. Non-finite points are left out and counted;
* the ego status: velocity, acceleration (``Frame.meta``, odometry) and the driving command one-hot
  (left, straight, right, unknown), as NAVSIM hands every agent.

Targets (from the scene, never from the inputs): the ego future ``[8, 3]`` (x, y, heading; 4 s at
2 Hz) and a 7-class BEV semantic map on the model's map grid (TransFuser's classes; see
:data:`BEV_CLASSES` and :func:`sim_bev_classes` for the mapping from the synthetic world).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from perception.geometry.grid import BevGrid
from perception.pipeline.camera import IMAGENET_MEAN, IMAGENET_STD, scale_camera
from perception.structures import Boxes3D, Detections, Frame, Targets

CAMERAS = ("CAM_L0", "CAM_F0", "CAM_R0")
BEV_CLASSES = ("background", "road", "walkway", "centerline", "static_object", "vehicle", "pedestrian")
IGNORE = 255  # a BEV cell without a label (outside the source map)
HIST_MAX, SPLIT_HEIGHT, MAX_HEIGHT = 5.0, 0.2, 3.0  # TransFuser: 5 points per cell; ground / above split (m)
IMAGE_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / 255.0  # images are scaled to [0, 1] first
IMAGE_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) / 255.0
STATUS_DIM = 8  # vx, vy, ax, ay, command one-hot (4): NAVSIM's ego status
AGENT_DIM = 8  # x, y, length, width, cos, sin, vx, vy (ego frame)
NUM_COMMANDS = 4


@dataclass
class PlanningInputs:
    """One batch of model inputs.

    images ``[B, V, 3, H, W]`` normalised; camera_valid ``[B, V]`` bool; img_from_ego ``[B, V, 3, 4]``
    (ego-frame point → homogeneous pixel of the resized image); lidar_bev ``[B, 2, nx, ny]`` in [0, 1];
    lidar_valid ``[B]`` bool; ego_status ``[B, 8]``; agents ``[B, A, 8]`` with agent_mask ``[B, A]``
    (detections handed in by a detector, e.g. MSF; ``A`` may be 0); frames: where they came from.
    """

    images: torch.Tensor
    camera_valid: torch.Tensor
    img_from_ego: torch.Tensor
    lidar_bev: torch.Tensor
    lidar_valid: torch.Tensor
    ego_status: torch.Tensor
    agents: torch.Tensor
    agent_mask: torch.Tensor
    frames: list[Frame]
    n_nonfinite: list[int]

    def to(self, device) -> "PlanningInputs":
        t = {k: getattr(self, k).to(device) for k in ("images", "camera_valid", "img_from_ego", "lidar_bev",
                                                      "lidar_valid", "ego_status", "agents", "agent_mask")}
        return PlanningInputs(**t, frames=self.frames, n_nonfinite=self.n_nonfinite)


def lidar_histogram(points: np.ndarray, grid: BevGrid) -> tuple[np.ndarray, int]:
    """Ego-frame ``points [N, >=3]`` → ``([2, nx, ny] float32 in [0, 1], n_nonfinite)``."""
    pts = np.asarray(points, dtype=np.float32)[:, :3]
    finite = np.isfinite(pts).all(axis=1)
    pts = pts[finite & (pts[:, 2] <= MAX_HEIGHT)]
    nx, ny = grid.shape
    out = np.zeros((2, nx, ny), np.float32)
    ij, inside = grid.index(pts[:, :2])
    above = (pts[:, 2] > SPLIT_HEIGHT).astype(np.int64)
    flat = (above * nx + ij[:, 0]) * ny + ij[:, 1]
    np.add.at(out.reshape(-1), flat[inside], 1.0)
    return np.minimum(out, HIST_MAX) / HIST_MAX, int((~finite).sum())


def camera_input(frame: Frame, name: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One camera → ``(image [3, H, W], img_from_ego [3, 4], valid)``; a missing camera is zeros, not valid."""
    h, w = size
    cam = frame.calib.cameras.get(name)
    if name not in frame.cameras or cam is None or not hasattr(cam, "fx"):
        return torch.zeros(3, h, w), torch.zeros(3, 4), False
    img = torch.from_numpy(np.ascontiguousarray(frame.cameras[name].image)).permute(2, 0, 1).float() / 255.0
    img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    img = (img - IMAGE_MEAN) / IMAGE_STD
    cam = scale_camera(cam, w, h)
    k = torch.tensor([[cam.fx, 0.0, cam.cx], [0.0, cam.fy, cam.cy], [0.0, 0.0, 1.0]])
    cam_from_ego = torch.tensor(frame.calib.transform(name, "ego").matrix, dtype=torch.float32)
    return img, k @ cam_from_ego[:3], True


def ego_status(frame: Frame, command: int | None) -> torch.Tensor:
    """NAVSIM's ego status ``[8]`` (velocity, acceleration, command one-hot; see
    :func:`perception.models.planning.baselines.ego_status`): from ``ego_dynamic_state`` (NAVSIM logs)
    or from speed / acceleration / yaw rate (the synthetic world's odometry); zeros where the source
    has neither, an unknown command when it gives none."""
    from perception.models.planning.baselines import ego_status as status

    m = frame.meta
    c = 3 if command is None or not 0 <= int(command) < NUM_COMMANDS else int(command)
    dyn = m.get("ego_dynamic_state")
    if dyn is not None and np.size(dyn) >= 4:
        out = status(0.0, 0.0, 0.0, c)
        out[:4] = np.asarray(dyn, np.float32).reshape(-1)[:4]
    else:
        out = status(float(m.get("ego_speed", 0.0)), float(m.get("ego_acceleration", 0.0)),
                     float(m.get("ego_yaw_rate", 0.0)), c)
    return torch.nan_to_num(torch.from_numpy(out))


def agent_tokens(det: Detections | None, max_agents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Detections (ego frame) → ``([max_agents, 8], mask [max_agents])``, highest scores first."""
    out, mask = torch.zeros(max_agents, AGENT_DIM), torch.zeros(max_agents, dtype=torch.bool)
    if det is None or not len(det) or max_agents == 0:
        return out, mask
    order = np.argsort(-det.scores)[:max_agents]
    b = np.asarray(det.boxes.tensor, np.float64)[order]
    vel = b[:, 7:9] if b.shape[1] >= 9 else np.zeros((len(b), 2))
    feats = np.column_stack([b[:, 0], b[:, 1], b[:, 3], b[:, 4], np.cos(b[:, 6]), np.sin(b[:, 6]), vel])
    out[:len(b)] = torch.from_numpy(np.nan_to_num(feats)).float()
    mask[:len(b)] = torch.from_numpy(np.isfinite(b[:, :7]).all(axis=1))
    return out, mask


def build_inputs(frames: Sequence[Frame], commands: Sequence[int | None], lidar_grid: BevGrid,
                 image_size: tuple[int, int], cameras: Sequence[str] = CAMERAS,
                 detections: Sequence[Detections | None] | None = None, max_agents: int = 0) -> PlanningInputs:
    imgs, valid, proj, bev, lvalid, status, agents, amask, bad = [], [], [], [], [], [], [], [], []
    for i, frame in enumerate(frames):
        per_cam = [camera_input(frame, name, image_size) for name in cameras]
        imgs.append(torch.stack([c[0] for c in per_cam]))
        proj.append(torch.stack([c[1] for c in per_cam]))
        valid.append(torch.tensor([c[2] for c in per_cam]))
        if frame.lidar:
            h, n_bad = lidar_histogram(frame.points_in_ego(), lidar_grid)
            bev.append(torch.from_numpy(h))
            lvalid.append(True)
        else:
            bev.append(torch.zeros(2, *lidar_grid.shape))
            lvalid.append(False)
            n_bad = 0
        bad.append(n_bad)
        status.append(ego_status(frame, commands[i]))
        a, m = agent_tokens(detections[i] if detections is not None else None, max_agents)
        agents.append(a)
        amask.append(m)
    return PlanningInputs(torch.stack(imgs), torch.stack(valid), torch.stack(proj), torch.stack(bev),
                          torch.tensor(lvalid), torch.stack(status), torch.stack(agents), torch.stack(amask),
                          list(frames), bad)


# --- targets ----------------------------------------------------------------------------------
def sim_bev_classes() -> np.ndarray:
    """Lookup table: the synthetic world's class id → :data:`BEV_CLASSES` index.

    road and parking → road; sidewalk → walkway; lane markings → centerline (the world draws lane
    lines, not centrelines: the nearest thing it has); car → vehicle; pedestrian and cyclist →
    pedestrian (TransFuser has no cyclist class; they are the vulnerable road users); terrain and
    everything else → background. The world's BEV map carries no static objects (poles and buildings
    are not on it), so ``static_object`` stays empty on synthetic data.
    """
    from perception.sim import world as W

    lut = np.zeros(256, np.uint8)
    lut[[W.ROAD, W.PARKING]] = 1
    lut[W.SIDEWALK] = 2
    lut[[W.MARKING_WHITE, W.MARKING_YELLOW]] = 3
    lut[W.CAR] = 5
    lut[[W.PEDESTRIAN, W.CYCLIST]] = 6
    return lut


def bev_target(targets: Targets, grid: BevGrid) -> torch.Tensor:
    """The scene's BEV semantic map resampled (nearest cell) onto ``grid`` → ``[nx, ny]`` long.

    Cells outside the source map, or a sample without one, are :data:`IGNORE`.
    """
    out = np.full(grid.shape, IGNORE, np.int64)
    src = targets.bev_semantic
    src_grid = targets.meta.get("bev_grid") if targets.meta else None
    if src is None or not isinstance(src_grid, BevGrid):
        return torch.from_numpy(out)
    lut = sim_bev_classes()
    ij, inside = src_grid.index(grid.cell_centers().reshape(-1, 2))
    flat = out.reshape(-1)
    flat[inside] = lut[src[ij[inside, 0], ij[inside, 1]]]
    return torch.from_numpy(out)


def trajectory_target(targets: Targets, steps: int) -> tuple[torch.Tensor, bool]:
    """``([steps, 3], valid)``: the ego future (x, y, heading), or zeros and False when the scene has none."""
    fut = targets.ego_future
    if fut is None or len(fut.poses) < steps or not np.isfinite(fut.poses[:steps]).all():
        return torch.zeros(steps, 3), False
    return torch.from_numpy(np.asarray(fut.poses[:steps], np.float32)), True


def boxes_as_detections(boxes: Boxes3D) -> Detections:
    """Ground-truth boxes as perfect detections (for training with agent tokens)."""
    return Detections(boxes, np.ones(len(boxes), np.float32))
