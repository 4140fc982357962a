"""GaussianFusion's Gaussian encoder: 2-D BEV Gaussians refined by LiDAR and camera cross-attention.

Liu et al., "GaussianFusion: Gaussian-Based Multi-Sensor Fusion for End-to-End Autonomous Driving",
NeurIPS 2025 (arXiv 2506.00034), Sec. 3.2-3.3. Each Gaussian carries physical attributes (mean,
scale, rotation as cos/sin, semantic logits, opacity) and two features: an **explicit** one that
gathers local evidence where the Gaussian sits (point cross-attention into the LiDAR BEV maps,
image cross-attention through a pillar of 3-D points projected into every camera) and is what the
map branch renders, and an **implicit** one that attends globally to all sensor tokens and carries
planning cues. One block:

1. point cross-attention: deformable attention (Zhu et al., Deformable DETR) over the multi-scale
   LiDAR BEV maps, ``points`` samples per head and level placed along the Gaussian's own axes in
   units of its scale (``grid_sample``);
2. image cross-attention: ``heights`` points above the Gaussian's mean, projected into every
   camera; features sampled where they land in front of a camera and inside its image, weighted by a
   softmax over the valid (view, height) pairs;
3. self-attention over the explicit features and, separately, over the implicit ones (after the
   implicit features' global cross-attention to the LiDAR and image tokens);
4. an MLP refinement of the Gaussian's parameters from both features.

A sensor the frame lacks (``lidar_valid`` / ``camera_valid`` false) contributes nothing: its
attention outputs are masked, and a learned null token keeps the global attention defined.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from perception.geometry.grid import BevGrid


@dataclass
class GaussianState:
    """Batched Gaussians: means ``[B, G, 2]`` (m), log_scales ``[B, G, 2]``, rot ``[B, G, 2]`` (cos, sin),
    semantics ``[B, G, S]`` logits, opacity ``[B, G]`` logits, explicit / implicit ``[B, G, D]``."""

    means: torch.Tensor
    log_scales: torch.Tensor
    rot: torch.Tensor
    semantics: torch.Tensor
    opacity: torch.Tensor
    explicit: torch.Tensor
    implicit: torch.Tensor

    @property
    def scales(self) -> torch.Tensor:
        return self.log_scales.exp()

    @property
    def angle(self) -> torch.Tensor:  # [B, G]
        return torch.atan2(self.rot[..., 1], self.rot[..., 0])


@dataclass
class SensorContext:
    """Encoded sensors for one batch.

    lidar ``list[[B, D, h, w]]`` (BEV levels, ``lidar_grid`` extent); images ``[B, V, D, h, w]``;
    img_from_ego ``[B, V, 3, 4]`` in pixels of an ``image_size`` image; tokens ``[B, N, D]`` (global
    keys, with positions added) and token_mask ``[B, N]`` (True = ignore).
    """

    lidar: list[torch.Tensor]
    lidar_valid: torch.Tensor
    lidar_grid: BevGrid
    images: torch.Tensor
    camera_valid: torch.Tensor
    img_from_ego: torch.Tensor
    image_size: tuple[int, int]
    tokens: torch.Tensor
    token_mask: torch.Tensor


def fourier(x: torch.Tensor, bands: int) -> torch.Tensor:
    """``[..., A]`` in about [-1, 1] → ``[..., 2 A bands]`` sin/cos features at octave frequencies."""
    f = (2.0 ** torch.arange(bands, device=x.device, dtype=x.dtype)) * math.pi
    arg = (x[..., None] * f).flatten(-2)
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


def bev_to_grid(xy: torch.Tensor, grid: BevGrid) -> torch.Tensor:
    """Ego-frame ``xy [..., 2]`` → ``grid_sample`` coordinates for a ``[nx, ny]`` map (H = x, W = y)."""
    gx = 2 * (xy[..., 1] - grid.y_min) / (grid.y_max - grid.y_min) - 1  # along W
    gy = 2 * (xy[..., 0] - grid.x_min) / (grid.x_max - grid.x_min) - 1  # along H
    return torch.stack([gx, gy], dim=-1)


class DeformablePointAttention(nn.Module):
    """Deformable attention of each Gaussian into the multi-scale LiDAR BEV maps → ``[B, G, D]``."""

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.h, self.l, self.p = heads, levels, points
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.value = nn.Conv2d(dim, dim, 1)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        with torch.no_grad():  # start as a fixed star of samples around the mean (up to 2 sigma)
            ang = torch.arange(heads * points) * (2 * math.pi / (heads * points))
            r = torch.linspace(0.5, 2.0, points).repeat(heads)
            star = torch.stack([ang.cos() * r, ang.sin() * r], -1).view(heads, 1, points, 2).expand(heads, levels, points, 2)
            self.offsets.bias.copy_(star.reshape(-1))

    def forward(self, query: torch.Tensor, g: GaussianState, ctx: SensorContext) -> torch.Tensor:
        B, G, D = query.shape
        H, L, P = self.h, self.l, self.p
        off = self.offsets(query).view(B, G, H, L, P, 2) * g.scales[:, :, None, None, None, :]
        c, s = g.rot[..., 0, None, None, None], g.rot[..., 1, None, None, None]  # [B, G, 1, 1, 1]
        world = torch.stack([c * off[..., 0] - s * off[..., 1], s * off[..., 0] + c * off[..., 1]], -1)
        pts = g.means[:, :, None, None, None, :] + world  # [B, G, H, L, P, 2]
        attn = self.weights(query).view(B, G, H, L * P).softmax(-1).view(B, G, H, L, P)
        out = query.new_zeros(B * H, D // H, G)
        for lvl, fmap in enumerate(ctx.lidar):
            v = self.value(fmap).reshape(B * H, D // H, *fmap.shape[-2:])
            grid = bev_to_grid(pts[:, :, :, lvl], ctx.lidar_grid).permute(0, 2, 1, 3, 4).reshape(B * H, G, P, 2)
            sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            w = attn[:, :, :, lvl].permute(0, 2, 1, 3).reshape(B * H, 1, G, P)
            out = out + (sampled * w).sum(-1)
        out = out.view(B, H, D // H, G).permute(0, 3, 1, 2).reshape(B, G, D)
        return self.out(out) * ctx.lidar_valid[:, None, None].to(out.dtype)


class ImageCrossAttention(nn.Module):
    """Each Gaussian lifted to a pillar of ``heights`` points, projected into every camera → ``[B, G, D]``."""

    def __init__(self, dim: int, heights: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("heights", torch.tensor(heights, dtype=torch.float32), persistent=False)
        self.weights = nn.Linear(dim, len(heights))
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, g: GaussianState, ctx: SensorContext) -> torch.Tensor:
        B, G, D = query.shape
        V = ctx.images.shape[1]
        Z = len(self.heights)
        Himg, Wimg = ctx.image_size
        xyz = torch.cat([g.means[:, :, None, :].expand(B, G, Z, 2), self.heights.view(1, 1, Z, 1).expand(B, G, Z, 1),
                         query.new_ones(B, G, Z, 1)], dim=-1)  # [B, G, Z, 4]
        uvw = torch.einsum("bvij,bgzj->bvgzi", ctx.img_from_ego, xyz)  # [B, V, G, Z, 3]
        depth = uvw[..., 2]
        uv = uvw[..., :2] / depth.clamp(min=1e-3)[..., None]
        valid = ((depth > 0.5) & (uv[..., 0] >= 0) & (uv[..., 0] <= Wimg - 1) & (uv[..., 1] >= 0)
                 & (uv[..., 1] <= Himg - 1) & ctx.camera_valid[:, :, None, None])
        grid = torch.stack([(2 * uv[..., 0] + 1) / Wimg - 1, (2 * uv[..., 1] + 1) / Himg - 1], -1)
        grid = torch.where(valid[..., None], grid, torch.full_like(grid, -2.0))  # invalid → outside, zeros
        feats = ctx.images.flatten(0, 1)  # [B V, D, h, w]
        sampled = F.grid_sample(feats, grid.flatten(0, 1), mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.view(B, V, D, G, Z)
        logits = self.weights(query).permute(0, 2, 1)[:, None].expand(B, V, Z, G).permute(0, 1, 3, 2)  # [B, V, G, Z]
        logits = logits.masked_fill(~valid, float("-inf"))
        w = logits.permute(0, 2, 1, 3).reshape(B, G, V * Z).softmax(-1)
        w = torch.nan_to_num(w, nan=0.0).view(B, G, V, Z).permute(0, 2, 1, 3)  # no valid view: all zero
        out = torch.einsum("bvdgz,bvgz->bgd", sampled, w)
        return self.out(out) * valid.any(1).any(-1)[..., None].to(out.dtype)  # seen by no camera: nothing


def _ffn(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))


class GaussianEncoderBlock(nn.Module):
    """One refinement block (steps 1-4 of the module docstring)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, heights: tuple[float, ...],
                 num_classes: int, max_step: float, scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.max_step = max_step
        self.log_scale_range = (math.log(scale_range[0]), math.log(scale_range[1]))
        self.point_attn = DeformablePointAttention(dim, heads, levels, points)
        self.image_attn = ImageCrossAttention(dim, heights)
        self.self_explicit = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.global_implicit = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_implicit = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn_explicit, self.ffn_implicit = _ffn(dim, 2), _ffn(dim, 2)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(7))
        self.refine = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 5 + num_classes + 1))
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, g: GaussianState, pos: torch.Tensor, ctx: SensorContext) -> GaussianState:
        n = self.norms
        x = n[0](g.explicit + self.point_attn(g.explicit + pos, g, ctx))
        x = n[1](x + self.image_attn(x + pos, g, ctx))
        q = x + pos
        x = n[2](x + self.self_explicit(q, q, x, need_weights=False)[0])
        x = n[3](x + self.ffn_explicit(x))
        y = g.implicit
        y = n[4](y + self.global_implicit(y + pos, ctx.tokens, ctx.tokens, key_padding_mask=ctx.token_mask,
                                          need_weights=False)[0])
        q = y + pos
        y = n[5](y + self.self_implicit(q, q, y, need_weights=False)[0])
        y = n[6](y + self.ffn_implicit(y))
        d = self.refine(torch.cat([x, y], -1))
        means = g.means + torch.tanh(d[..., 0:2]) * self.max_step
        log_scales = (g.log_scales + d[..., 2:4]).clamp(*self.log_scale_range)
        ang = torch.atan2(g.rot[..., 1], g.rot[..., 0]) + d[..., 4]
        rot = torch.stack([ang.cos(), ang.sin()], -1)
        return replace(g, means=means, log_scales=log_scales, rot=rot, semantics=g.semantics + d[..., 5:-1],
                       opacity=g.opacity + d[..., -1], explicit=x, implicit=y)
