"""GaussianFusion: end-to-end planning from cameras + LiDAR through 2-D BEV Gaussians.

Liu, Liang, Li, Li, Huang, "GaussianFusion: Gaussian-Based Multi-Sensor Fusion for End-to-End
Autonomous Driving", NeurIPS 2025 (arXiv 2506.00034). The pieces:

* encoders (:mod:`.encoders`): a ResNet-style image encoder shared by the front cameras and a LiDAR
  BEV encoder over TransFuser's histogram (:mod:`.features`), both multi-scale;
* ``num_gaussians`` 2-D Gaussians with learnable initial parameters, means spread uniformly over the
  BEV, refined by ``blocks`` encoder blocks (:mod:`.gaussians`);
* the map branch (training only): the Gaussians' semantic logits rendered into the BEV with
  :func:`~perception.ops.gaussian_splat.gaussian_splat_bev`, cross-entropy + Lovász-softmax against
  the 7-class BEV map;
* the cascade planning head (:mod:`perception.models.planning.cascade_head`) over Gaussian tokens
  (explicit + implicit features, semantics and opacity), with the ego status, optionally with agent
  tokens (a detector's boxes).

The chosen plan is re-timed along its own path to keep its longitudinal acceleration within
``accel_limits`` and its change within ``jerk_limit`` (:mod:`perception.models.planning.kinematics`;
None keeps the raw regression); the scored candidates are left as regressed. The defaults (-4, 1.5)
m/s² and 2 m/s³ sit inside nuPlan's comfort bounds and were chosen on training sequences.

Sensor dropout (training): each camera and the LiDAR are dropped with probability
``sensor_dropout`` per sample, so that a frame missing a sensor at inference still gets a sensible
plan (the missing sensor's attention is masked, see :mod:`.gaussians`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from perception.geometry.grid import BevGrid, as_grid
from perception.models.gaussian_fusion.encoders import PyramidEncoder
from perception.models.gaussian_fusion.features import (
    AGENT_DIM, BEV_CLASSES, CAMERAS, IGNORE, STATUS_DIM, PlanningInputs, bev_target, boxes_as_detections,
    build_inputs, trajectory_target,
)
from perception.models.gaussian_fusion.gaussians import GaussianEncoderBlock, GaussianState, SensorContext, fourier
from perception.models.gaussian_fusion.losses import lovasz_softmax
from perception.models.planning.anchors import resolve_anchors
from perception.models.planning.cascade_head import CascadePlanningHead
from perception.models.planning.kinematics import limit_acceleration
from perception.ops.gaussian_splat import gaussian_splat_bev
from perception.structures import BevGaussians, Frame, Plan, PlanningOutput, Sample, Targets, Trajectory

FUTURE_DT = 0.5  # NAVSIM: 8 poses at 2 Hz


class GaussianFusionPreprocessor(BaseDataPreprocessor):
    """``list[Sample]`` → ``dict(inputs=PlanningInputs, data_samples=list[Targets | None])``.

    ``agents="gt"`` hands the ground-truth boxes in as agent tokens (training the agent pathway that a
    detector feeds at inference); ``"none"`` gives none. Sensor dropout happens here, in training only.
    """

    def __init__(self, lidar_grid: BevGrid, image_size: tuple[int, int], cameras: Sequence[str],
                 max_agents: int = 0, agents: str = "none", sensor_dropout: float = 0.0) -> None:
        super().__init__()
        if agents not in ("none", "gt"):
            raise ValueError(f"GaussianFusionPreprocessor.agents: 'none' or 'gt', got {agents!r}")
        self.lidar_grid, self.image_size, self.cameras = lidar_grid, tuple(image_size), tuple(cameras)
        self.max_agents, self.agents, self.sensor_dropout = int(max_agents), agents, float(sensor_dropout)

    def forward(self, data: list[Sample], training: bool = False) -> dict:
        if not data or not all(isinstance(s, Sample) for s in data):
            raise TypeError(f"GaussianFusionPreprocessor: expected a non-empty list[Sample], got {type(data).__name__}")
        targets = [s.targets for s in data]
        dets = None
        if self.agents == "gt" and self.max_agents:
            dets = [boxes_as_detections(t.boxes) if t is not None else None for t in targets]
        commands = [t.driving_command if t is not None else None for t in targets]
        inputs = build_inputs([s.frame for s in data], commands, self.lidar_grid, self.image_size, self.cameras,
                              dets, self.max_agents)
        if training and self.sensor_dropout > 0:
            drop_cam = torch.rand(inputs.camera_valid.shape) < self.sensor_dropout
            drop_lidar = torch.rand(inputs.lidar_valid.shape) < self.sensor_dropout
            inputs.camera_valid &= ~drop_cam
            inputs.images[~inputs.camera_valid] = 0.0
            inputs.lidar_valid &= ~drop_lidar
            inputs.lidar_bev[~inputs.lidar_valid] = 0.0
        return {"inputs": inputs.to(self.device), "data_samples": targets}


class GaussianFusion(BaseModel):
    """The model (see the module docstring); ``forward`` follows mmengine's ``mode`` convention.

    Args:
        lidar_grid: the LiDAR histogram's :class:`BevGrid` (TransFuser: ±32 m at 0.25 m).
        map_grid: the rendered BEV map's grid (the map branch's target).
        image_size: ``(H, W)`` every camera is resized to. cameras: their names, in order.
        anchors: ``[K, T, 3]`` anchor trajectories, a ``.npy`` path, ``dict(dataset=..., k=20)`` (k-means
            over that dataset's futures, see :func:`~perception.models.planning.anchors.resolve_anchors`),
            or None when they come with a checkpoint.
    """

    def __init__(self, lidar_grid: BevGrid | dict, map_grid: BevGrid | dict, image_size: Sequence[int] = (96, 160),
                 cameras: Sequence[str] = CAMERAS, num_gaussians: int = 512, dim: int = 128, heads: int = 4,
                 blocks: int = 4, image_widths: Sequence[int] = (32, 64, 128), lidar_widths: Sequence[int] = (32, 64, 128),
                 encoder_blocks: int = 1, points: int = 4, heights: Sequence[float] = (0.5, 1.5, 3.0),
                 anchors: np.ndarray | None = None, num_anchors: int = 20, stages: int = 2, knn: int = 16,
                 map_weight: float = 1.0, lovasz_weight: float = 1.0, max_agents: int = 0, agents: str = "none",
                 sensor_dropout: float = 0.1, init_scale: float = 2.0, scale_range: Sequence[float] = (0.25, 8.0),
                 max_step: float = 2.0, accel_limits: Sequence[float] | None = (-4.0, 1.5), jerk_limit: float | None = 2.0,
                 seed: int = 0) -> None:
        self.lidar_grid, self.map_grid = as_grid(lidar_grid), as_grid(map_grid)
        super().__init__(data_preprocessor=GaussianFusionPreprocessor(
            self.lidar_grid, tuple(image_size), cameras, max_agents, agents, sensor_dropout))
        self.image_size, self.cameras, self.dim = tuple(image_size), tuple(cameras), dim
        self.map_weight, self.lovasz_weight = map_weight, lovasz_weight
        self.accel_limits = None if accel_limits is None else (float(accel_limits[0]), float(accel_limits[1]))
        self.jerk_limit = jerk_limit
        self.classes = BEV_CLASSES
        self.image_encoder = PyramidEncoder(3, tuple(image_widths), dim, encoder_blocks)
        self.lidar_encoder = PyramidEncoder(2, tuple(lidar_widths), dim, encoder_blocks)
        self.camera_embed = nn.Parameter(torch.randn(len(self.cameras), dim) * 0.02)
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.token_pos = nn.Linear(2 * 2 * 6, dim)

        g = self.map_grid
        gen = torch.Generator().manual_seed(seed)
        lo, hi = torch.tensor([g.x_min, g.y_min]), torch.tensor([g.x_max, g.y_max])
        self.init_means = nn.Parameter(lo + torch.rand(num_gaussians, 2, generator=gen) * (hi - lo))
        self.init_log_scales = nn.Parameter(torch.full((num_gaussians, 2), math.log(init_scale)))
        self.init_angle = nn.Parameter(torch.zeros(num_gaussians))
        self.init_explicit = nn.Parameter(torch.randn(num_gaussians, dim, generator=gen) * 0.02)
        self.init_implicit = nn.Parameter(torch.randn(num_gaussians, dim, generator=gen) * 0.02)
        self.pos = nn.Sequential(nn.Linear(2 * 2 * 6 + 4, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(
            GaussianEncoderBlock(dim, heads, len(lidar_widths), points, tuple(heights), len(self.classes), max_step,
                                 (float(scale_range[0]), float(scale_range[1]))) for _ in range(blocks))
        self.token = nn.Linear(2 * dim + len(self.classes) + 1, dim)
        self.planner = CascadePlanningHead(resolve_anchors(anchors), num_anchors, 8, dim, heads, stages, knn, STATUS_DIM, AGENT_DIM,
                                           xy_scale=max(abs(g.x_min), abs(g.x_max), abs(g.y_min), abs(g.y_max)))

    # --- encoding ------------------------------------------------------------------------------
    def _half_range(self) -> torch.Tensor:
        g = self.map_grid
        return torch.tensor([max(abs(g.x_min), abs(g.x_max)), max(abs(g.y_min), abs(g.y_max))])

    def _position(self, s: GaussianState) -> torch.Tensor:
        xy = s.means / self._half_range().to(s.means)
        return self.pos(torch.cat([fourier(xy, 6), s.rot, s.log_scales], -1))

    def encode(self, x: PlanningInputs) -> tuple[GaussianState, SensorContext]:
        B, V = x.images.shape[:2]
        lidar = self.lidar_encoder(x.lidar_bev)
        levels = self.image_encoder(x.images.flatten(0, 1))
        img = levels[-2] + F.interpolate(levels[-1], size=levels[-2].shape[-2:], mode="bilinear", align_corners=False)
        img = img.view(B, V, *img.shape[1:])
        # global tokens: the coarsest LiDAR level pooled to 8x8 cells, each camera's coarsest level to 2x4
        lt = F.adaptive_avg_pool2d(lidar[-1], (8, 8))  # [B, D, 8, 8]
        cells = torch.stack(torch.meshgrid(torch.linspace(-7 / 8, 7 / 8, 8), torch.linspace(-7 / 8, 7 / 8, 8),
                                           indexing="ij"), -1).to(lt)
        lt = lt.flatten(2).transpose(1, 2) + self.token_pos(fourier(cells.view(-1, 2), 6))
        it = F.adaptive_avg_pool2d(levels[-1], (2, 4)).view(B, V, self.dim, 8).permute(0, 1, 3, 2)
        it = (it + self.camera_embed[None, :, None]).reshape(B, V * 8, self.dim)
        tokens = torch.cat([self.null_token.expand(B, 1, self.dim), lt, it], 1)
        mask = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=lt.device),
                          (~x.lidar_valid)[:, None].expand(B, 64),
                          (~x.camera_valid)[:, :, None].expand(B, V, 8).reshape(B, V * 8)], 1)
        ctx = SensorContext(lidar, x.lidar_valid, self.lidar_grid, img, x.camera_valid, x.img_from_ego,
                            self.image_size, tokens, mask)
        G = self.init_means.shape[0]
        ang = self.init_angle[None].expand(B, G)
        s = GaussianState(self.init_means[None].expand(B, G, 2), self.init_log_scales[None].expand(B, G, 2),
                          torch.stack([ang.cos(), ang.sin()], -1), lt.new_zeros(B, G, len(self.classes)),
                          lt.new_zeros(B, G), self.init_explicit[None].expand(B, G, self.dim),
                          self.init_implicit[None].expand(B, G, self.dim))
        for block in self.blocks:
            s = block(s, self._position(s), ctx)
        return s, ctx

    def render(self, s: GaussianState) -> torch.Tensor:
        """The Gaussians' semantic logits splatted into the map grid → ``[B, S, nx, ny]``."""
        opacity, scales, angle = s.opacity.sigmoid(), s.scales, s.angle
        return torch.stack([gaussian_splat_bev(s.means[b], scales[b], angle[b], opacity[b], s.semantics[b], self.map_grid)
                            for b in range(s.means.shape[0])])

    def plan_outputs(self, s: GaussianState, x: PlanningInputs):
        tokens = self.token(torch.cat([s.explicit, s.implicit, s.semantics.softmax(-1), s.opacity.sigmoid()[..., None]], -1))
        return self.planner(tokens, s.means, x.ego_status, x.agents, x.agent_mask)

    # --- mmengine -----------------------------------------------------------------------------
    def forward(self, inputs: PlanningInputs, data_samples: list[Targets | None] | None = None, mode: str = "tensor"):
        s, _ = self.encode(inputs)
        outputs = self.plan_outputs(s, inputs)
        if mode == "tensor":
            return outputs
        if mode == "loss":
            if data_samples is None or any(t is None for t in data_samples):
                raise ValueError("GaussianFusion.loss: every sample needs targets")
            return self.loss(s, outputs, data_samples)
        if mode == "predict":
            return self.predict_outputs(s, outputs, inputs)
        raise ValueError(f"GaussianFusion: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    def loss(self, s: GaussianState, outputs, targets: list[Targets]) -> dict[str, torch.Tensor]:
        gt, valid = zip(*(trajectory_target(t, self.planner.anchors.shape[1]) for t in targets))
        gt, valid = torch.stack(gt).to(s.means), torch.tensor(valid, device=s.means.device)
        losses = self.planner.loss(outputs, gt, valid)
        labels = torch.stack([bev_target(t, self.map_grid) for t in targets]).to(s.means.device)  # [B, nx, ny]
        if self.map_weight > 0 and (labels != IGNORE).any():
            logits = self.render(s)
            losses["loss_map_ce"] = self.map_weight * F.cross_entropy(logits, labels, ignore_index=IGNORE)
            probs = logits.softmax(1)
            losses["loss_map_lovasz"] = self.lovasz_weight * torch.stack(
                [lovasz_softmax(probs[b].flatten(1), labels[b].flatten(), IGNORE) for b in range(len(targets))]).mean()
        return losses

    @torch.no_grad()
    def predict_outputs(self, s: GaussianState, outputs, x: PlanningInputs) -> list[PlanningOutput]:
        best, cands, scores = self.planner.select(outputs)
        bev = self.render(s).argmax(1).to(torch.uint8)
        labels = s.semantics.argmax(-1)
        t = FUTURE_DT * np.arange(1, best.shape[1] + 1)
        out = []
        for b, frame in enumerate(x.frames):
            cand = tuple(Trajectory(c.double().cpu().numpy(), t) for c in cands[b])
            poses = best[b].double().cpu().numpy()
            if self.accel_limits is not None:
                speed = float(torch.hypot(x.ego_status[b, 0], x.ego_status[b, 1]))
                poses = limit_acceleration(poses, FUTURE_DT, speed, *self.accel_limits, jerk=self.jerk_limit,
                                           accel=float(x.ego_status[b, 2]))
            plan = Plan(Trajectory(poses, t), cand, scores[b].cpu().numpy())
            gauss = BevGaussians(s.means[b].cpu().numpy(), s.scales[b].cpu().numpy(), s.angle[b].cpu().numpy(),
                                 s.opacity[b].sigmoid().cpu().numpy(), labels[b].cpu().numpy(), self.classes)
            missing = tuple(n for n, ok in zip(self.cameras, x.camera_valid[b].tolist()) if not ok)
            missing += () if bool(x.lidar_valid[b]) else ("lidar",)
            out.append(PlanningOutput(plan, gauss, bev[b].cpu().numpy(), missing))
        return out

    @torch.no_grad()
    def plan(self, frames: Sequence[Frame], commands: Sequence[int | None], detections=None) -> list[PlanningOutput]:
        """Inference on raw frames (the pipeline's entry): ``commands`` are the driving commands."""
        self.eval()
        pre = self.data_preprocessor
        x = build_inputs(frames, commands, self.lidar_grid, self.image_size, self.cameras, detections,
                         pre.max_agents).to(self.init_means.device)
        return self.forward(x, mode="predict")
