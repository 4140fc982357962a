"""MSF's region-based network: pooled points of a proposal over ``T`` frames → refined box and IoU score.

He, Li, Zhang, Li & Zhang, "MSF: Motion-guided Sequential Fusion for Efficient 3D Object Detection from
Point Cloud Sequences", CVPR 2023 (arXiv:2303.08316), Sec. 3.2-3.4. Shapes: ``K`` proposals, ``T``
frames (0 = current), ``P`` points per proposal per frame, ``D`` channels, ``G = T / group_size``
frame groups.

- **Point encoding** (:func:`point_features`): each pooled point in its proposal's box frame, with
  the *geometry* embedding of the paper (offsets to the box's 8 corners, relative to the box
  diagonal) and a *motion* embedding (the frame's time lag and how far the proposal was propagated
  to reach it, in the box frame), plus the point's own channels → an MLP to ``D``.
- **Learning blocks** (``blocks`` of them, 3 in the paper): the points of each frame group attend to
  each other together with a learnable *group token* (one per group position), which summarises
  the group; then **BiFA**, bidirectional feature aggregation over the group tokens: one pass
  carries information from the oldest group to the current one, another from the current one back
  to the oldest, each step mixing a group's token with its neighbour's aggregate; the two are fused
  into the token the next block starts from. Masked (missing) points never attend or get attended.
- **Outputs**: the current group's token and max-pooled points → box residuals w.r.t. the proposal
  (:func:`encode_residuals`) and an IoU logit; MSF ranks detections by ``score_rpn^(1-a) * iou^a``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MSFHead", "decode_residuals", "encode_residuals", "point_features", "propagate"]

RES_DIM = 8  # dx, dy, dz (box frame / diagonal, height), log size ratios (3), sin, cos of the yaw residual


def propagate(boxes: torch.Tensor, time_lags: torch.Tensor) -> torch.Tensor:
    """Proposals of the current frame moved back along their velocity: ``[K, 9]``, ``[T]`` → ``[T, K, 7]``.

    Frames are aligned to the current ego frame, so a static object stays put and one moving at
    ``v`` was ``v * lag`` behind (constant velocity over the short history, as MSF assumes).
    """
    out = boxes[None, :, :7].repeat(len(time_lags), 1, 1)
    out[..., :2] = out[..., :2] - boxes[None, :, 7:9] * time_lags[:, None, None]
    return out


def _corners_local(dims: torch.Tensor) -> torch.Tensor:
    """``dims [..., 3]`` (l, w, h) → the 8 corners in the box frame (origin at the bottom centre) ``[..., 8, 3]``."""
    sx = dims.new_tensor([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sy = dims.new_tensor([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sz = dims.new_tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return torch.stack([sx * dims[..., :1], sy * dims[..., 1:2], sz * dims[..., 2:3]], -1)


def point_features(local: torch.Tensor, extra: torch.Tensor, dims: torch.Tensor, shift: torch.Tensor,
                   time_lags: torch.Tensor) -> torch.Tensor:
    """Geometry and motion embedding of pooled points.

    Args:
        local: ``[T, K, P, 3]`` points in their (propagated) proposal's box frame.
        extra: ``[T, K, P, E]`` the points' other channels (intensity, ...).
        dims: ``[K, 3]`` proposal sizes.
        shift: ``[T, K, 2]`` how far each proposal was moved to reach frame ``t``, in its box frame.
        time_lags: ``[T]`` seconds.

    Returns ``[T, K, P, 3 + 24 + E + 3]``: xyz / diagonal, corner offsets / diagonal, extra, lag, shift.
    """
    diag = dims.norm(dim=-1).clamp(min=0.1)[None, :, None, None]  # [1, K, 1, 1]
    corners = _corners_local(dims)[None, :, None]  # [1, K, 1, 8, 3]
    offsets = (local[..., None, :] - corners).flatten(-2) / diag  # [T, K, P, 24]
    T, K, P, _ = local.shape
    lag = time_lags[:, None, None, None].expand(T, K, P, 1)
    mv = shift[:, :, None, :].expand(T, K, P, 2)
    return torch.cat([local / diag, offsets, extra, lag, mv], -1)


def encode_residuals(proposals: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``[N, >=7]`` proposals and matched ground truth → regression targets ``[N, 8]`` (see the module doc)."""
    d = gt[:, :3] - proposals[:, :3]
    c, s = torch.cos(proposals[:, 6]), torch.sin(proposals[:, 6])
    diag = proposals[:, 3:5].norm(dim=1).clamp(min=0.1)
    dx, dy = (c * d[:, 0] + s * d[:, 1]) / diag, (-s * d[:, 0] + c * d[:, 1]) / diag
    dz = d[:, 2] / proposals[:, 5].clamp(min=0.1)
    size = torch.log(gt[:, 3:6].clamp(min=0.05) / proposals[:, 3:6].clamp(min=0.05))
    dyaw = gt[:, 6] - proposals[:, 6]
    return torch.cat([torch.stack([dx, dy, dz], 1), size, torch.stack([torch.sin(dyaw), torch.cos(dyaw)], 1)], 1)


def decode_residuals(proposals: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_residuals`: ``[N, >=7]`` proposals, ``[N, 8]`` → boxes ``[N, 7]``."""
    c, s = torch.cos(proposals[:, 6]), torch.sin(proposals[:, 6])
    diag = proposals[:, 3:5].norm(dim=1).clamp(min=0.1)
    lx, ly = res[:, 0] * diag, res[:, 1] * diag
    x = proposals[:, 0] + c * lx - s * ly
    y = proposals[:, 1] + s * lx + c * ly
    z = proposals[:, 2] + res[:, 2] * proposals[:, 5].clamp(min=0.1)
    size = proposals[:, 3:6].clamp(min=0.05) * res[:, 3:6].clamp(max=3.0).exp()
    yaw = proposals[:, 6] + torch.atan2(res[:, 6], res[:, 7])
    yaw = torch.atan2(torch.sin(yaw), torch.cos(yaw))
    return torch.cat([torch.stack([x, y, z], 1), size, yaw[:, None]], 1)


class BiFA(nn.Module):
    """Bidirectional feature aggregation over group tokens ``[K, G, D]`` (group 0 = current)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_current = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.to_past = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.fuse = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        G = h.shape[1]
        fwd = [h[:, G - 1]]  # oldest → current
        for g in range(G - 2, -1, -1):
            fwd.append(h[:, g] + self.to_current(torch.cat([h[:, g], fwd[-1]], -1)))
        fwd = torch.stack(fwd[::-1], 1)
        bwd = [h[:, 0]]  # current → oldest
        for g in range(1, G):
            bwd.append(h[:, g] + self.to_past(torch.cat([h[:, g], bwd[-1]], -1)))
        bwd = torch.stack(bwd, 1)
        return self.norm(h + self.fuse(torch.cat([fwd, bwd], -1)))


class MSFHead(nn.Module):
    """Pooled points ``[T, K, P, F]`` (+ mask ``[T, K, P]``) → ``(residuals [K, 8], iou_logit [K])``."""

    def __init__(self, in_channels: int, frames: int = 4, group_size: int = 1, dim: int = 64, heads: int = 4,
                 blocks: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        if frames % group_size:
            raise ValueError(f"MSFHead: frames ({frames}) must be a multiple of group_size ({group_size})")
        self.frames, self.group_size, self.groups = frames, group_size, frames // group_size
        self.embed = nn.Sequential(nn.Linear(in_channels, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim))
        self.tokens = nn.Parameter(torch.randn(self.groups, dim) * 0.02)  # one learnable token per group
        self.attn = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
                                  for _ in range(blocks))
        self.bifa = nn.ModuleList(BiFA(dim) for _ in range(blocks))
        self.shared = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU())
        self.reg = nn.Linear(dim, RES_DIM)
        self.iou = nn.Linear(dim, 1)
        nn.init.zeros_(self.reg.weight)
        with torch.no_grad():
            self.reg.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 0, 1.0]))  # start at "no change"

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T, K, P, _ = feats.shape
        if T != self.frames:
            raise ValueError(f"MSFHead: built for {self.frames} frames, got {T}")
        G, S = self.groups, self.group_size * P
        x = self.embed(feats)  # [T, K, P, D]
        D = x.shape[-1]
        # frame groups: [K * G, S, D] (a group's frames' points side by side)
        x = x.permute(1, 0, 2, 3).reshape(K * G, S, D)
        pad = ~mask.permute(1, 0, 2).reshape(K * G, S)
        x = x.masked_fill(pad[..., None], 0.0)
        tok = self.tokens[None].expand(K, G, D).reshape(K * G, 1, D)
        keep_pad = torch.cat([pad.new_zeros(K * G, 1), pad], 1)  # the token is always there
        for attn, bifa in zip(self.attn, self.bifa):
            y = attn(torch.cat([tok, x], 1), src_key_padding_mask=keep_pad)
            tok, x = y[:, :1], y[:, 1:].masked_fill(pad[..., None], 0.0)
            tok = bifa(tok.reshape(K, G, D)).reshape(K * G, 1, D)
        cur_tok = tok.reshape(K, G, D)[:, 0]
        cur_pts = x.reshape(K, G, S, D)[:, 0].masked_fill(pad.reshape(K, G, S)[:, 0, :, None], -math.inf).amax(1)
        cur_pts = torch.where(torch.isfinite(cur_pts), cur_pts, torch.zeros_like(cur_pts))  # no point at all
        h = self.shared(torch.cat([cur_tok, cur_pts], -1))
        return self.reg(h), self.iou(h)[:, 0]
