"""Cascade planning head: anchor trajectories refined stage by stage by attending to BEV Gaussians.

GaussianFusion (Liu et al., NeurIPS 2025, arXiv 2506.00034), Sec. 3.4. ``K`` anchor trajectories
(k-means over the training futures, :mod:`perception.models.planning.anchors`) of ``T`` waypoints
start the cascade. In every stage each waypoint is a query that

1. attends to its ``knn`` nearest Gaussians (by distance from the waypoint to the Gaussian means,
   keys carrying the relative position), then
2. attends to all Gaussians (and to agent tokens, e.g. MSF's detections, when they are given),

after which each trajectory scores itself (max over its waypoints) and regresses a correction of
every waypoint. A stage's refined trajectories are the next stage's references. Training: per stage,
the reference nearest the ground truth (mean waypoint distance) is the positive of a sigmoid focal
loss over the ``K`` scores, and its refined poses take an L1 loss (xy in metres, heading wrapped)
plus an L1 loss between its second differences and the ground truth's (from the current pose: the
waypoints' accelerations), which keeps plans as smooth as the driving they learn from.
Inference: the highest-scoring trajectory of the last stage.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perception.models.gaussian_fusion.gaussians import fourier


def _mlp(cin: int, dim: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, dim), nn.GELU(), nn.Linear(dim, cout))


def wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.atan2(torch.sin(a), torch.cos(a))


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017) per sample, summed over the ``K`` scores: ``logits, target [B, K]`` → ``[B]``."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    at = alpha * target + (1 - alpha) * (1 - target)
    return (at * (1 - pt) ** gamma * ce).sum(-1)


class CascadeStage(nn.Module):
    """One refinement of ``[B, K, T, 3]`` references → ``(logits [B, K], trajectories [B, K, T, 3])``."""

    BANDS = 6

    def __init__(self, dim: int, heads: int, knn: int, steps: int, xy_scale: float) -> None:
        super().__init__()
        self.heads, self.knn, self.xy_scale = heads, knn, xy_scale
        fdim = 2 * 2 * self.BANDS + 2
        self.waypoint = _mlp(fdim, dim, dim)
        self.time = nn.Parameter(torch.randn(steps, dim) * 0.02)
        self.trajectory = _mlp(steps * fdim, dim, dim)
        self.rel = _mlp(2 * 2 * self.BANDS, dim, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.global_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = _mlp(dim, 2 * dim, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.mix = nn.Linear(dim, dim)
        self.score = _mlp(dim, dim, 1)
        self.delta = _mlp(dim, dim, 3)
        nn.init.zeros_(self.delta[-1].weight)
        nn.init.zeros_(self.delta[-1].bias)

    def embed(self, ref: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` poses → ``[..., 2 * 2 * BANDS + 2]`` (Fourier xy, cos/sin heading)."""
        return torch.cat([fourier(ref[..., :2] / self.xy_scale, self.BANDS), ref[..., 2:3].cos(), ref[..., 2:3].sin()], -1)

    def forward(self, ref: torch.Tensor, tokens: torch.Tensor, means: torch.Tensor, status: torch.Tensor,
                agents: torch.Tensor, agent_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, T, _ = ref.shape
        G, D = tokens.shape[1], tokens.shape[2]
        H = self.heads
        e = self.embed(ref)  # [B, K, T, F]
        q = self.waypoint(e) + self.time + self.trajectory(e.flatten(2))[:, :, None] + status[:, None, None]
        q = q.reshape(B, K * T, D)
        # 1. the nearest Gaussians of every waypoint
        wp = ref[..., :2].reshape(B, K * T, 2)
        n = min(self.knn, G)
        idx = torch.cdist(wp, means).topk(n, dim=-1, largest=False).indices  # [B, KT, n]
        bidx = torch.arange(B, device=q.device)[:, None, None]
        near, near_xy = tokens[bidx, idx], means[bidx, idx]  # [B, KT, n, D], [B, KT, n, 2]
        near = near + self.rel(fourier((near_xy - wp[:, :, None]) / self.xy_scale, self.BANDS))
        qh = self.q(q).view(B, K * T, 1, H, D // H)
        kh, vh = self.k(near).view(B, K * T, n, H, D // H), self.v(near).view(B, K * T, n, H, D // H)
        attn = ((qh * kh).sum(-1) / math.sqrt(D // H)).softmax(dim=2)  # [B, KT, n, H]
        local = (attn[..., None] * vh).sum(2).reshape(B, K * T, D)
        q = self.norms[0](q + self.o(local))
        # 2. all Gaussians (and agents)
        mem = torch.cat([tokens, agents], 1)
        mask = torch.cat([torch.zeros(B, G, dtype=torch.bool, device=q.device), ~agent_mask], 1)
        q = self.norms[1](q + self.global_attn(q, mem, mem, key_padding_mask=mask, need_weights=False)[0])
        q = self.norms[2](q + self.ffn(q)).view(B, K, T, D)
        q = self.norms[3](q + self.mix(q.max(dim=2).values)[:, :, None])
        logits = self.score(q.max(dim=2).values)[..., 0]
        d = self.delta(q)
        traj = torch.cat([ref[..., :2] + d[..., :2], wrap(ref[..., 2:3] + 0.1 * d[..., 2:3])], -1)
        return logits, traj


class CascadePlanningHead(nn.Module):
    """``stages`` cascade stages over ``anchors [K, T, 3]`` (a buffer: saved with the checkpoint)."""

    def __init__(self, anchors: np.ndarray | None = None, num_anchors: int = 20, steps: int = 8, dim: int = 128,
                 heads: int = 4, stages: int = 2, knn: int = 16, status_dim: int = 8, agent_dim: int = 8,
                 xy_scale: float = 32.0, heading_weight: float = 1.0, smooth_weight: float = 1.0) -> None:
        super().__init__()
        if anchors is None:  # filled from a checkpoint
            anchors = np.zeros((num_anchors, steps, 3), np.float32)
        anchors = np.asarray(anchors, np.float32)
        if anchors.ndim != 3 or anchors.shape[2] != 3:
            raise ValueError(f"CascadePlanningHead: anchors must be [K, T, 3], got {anchors.shape}")
        self.register_buffer("anchors", torch.from_numpy(anchors.copy()))
        self.heading_weight, self.smooth_weight = heading_weight, smooth_weight
        self.status = _mlp(status_dim, dim, dim)
        self.agent = _mlp(agent_dim, dim, dim)
        self.stages = nn.ModuleList(CascadeStage(dim, heads, knn, anchors.shape[1], xy_scale) for _ in range(stages))

    def forward(self, tokens: torch.Tensor, means: torch.Tensor, status: torch.Tensor,
                agents: torch.Tensor | None = None, agent_mask: torch.Tensor | None = None):
        """``tokens [B, G, D]`` at ``means [B, G, 2]``, ``status [B, S]``, ``agents [B, A, 8]`` + mask.

        Returns one ``(logits [B, K], trajectories [B, K, T, 3])`` per stage.
        """
        B = tokens.shape[0]
        if agents is None or agents.shape[1] == 0:
            agents = tokens.new_zeros(B, 0, self.agent[0].in_features)
            agent_mask = torch.zeros(B, 0, dtype=torch.bool, device=tokens.device)
        a = self.agent(agents)
        s = self.status(status)
        ref = self.anchors[None].expand(B, -1, -1, -1)
        out = []
        for stage in self.stages:
            logits, traj = stage(ref, tokens, means, s, a, agent_mask)
            out.append((logits, traj))
            ref = traj.detach()
        return out

    def loss(self, outputs, gt: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """``gt [B, T, 3]``; samples with ``valid`` False (no future) are left out of the loss."""
        losses = {}
        B = gt.shape[0]
        ref = self.anchors[None].expand(B, -1, -1, -1)
        w = valid.float()
        denom = w.sum().clamp(min=1.0)
        for s, (logits, traj) in enumerate(outputs):
            dist = (ref[..., :2] - gt[:, None, :, :2]).norm(dim=-1).mean(-1)  # [B, K]
            best = dist.argmin(1)
            target = F.one_hot(best, logits.shape[1]).float()
            focal = sigmoid_focal_loss(logits, target)
            chosen = traj[torch.arange(B), best]  # [B, T, 3]
            l1 = ((chosen[..., :2] - gt[..., :2]).abs().sum(-1)
                  + self.heading_weight * wrap(chosen[..., 2] - gt[..., 2]).abs()).mean(-1)
            losses[f"loss_cls_s{s}"] = (focal * w).sum() / denom
            losses[f"loss_traj_s{s}"] = (l1 * w).sum() / denom
            if self.smooth_weight > 0:  # the plan's accelerations follow the ground truth's (comfort)
                acc = lambda p: torch.diff(torch.cat([torch.zeros_like(p[:, :1]), p], 1), n=2, dim=1)  # noqa: E731
                sm = (acc(chosen[..., :2]) - acc(gt[..., :2])).abs().sum(-1).mean(-1)
                losses[f"loss_smooth_s{s}"] = self.smooth_weight * (sm * w).sum() / denom
            ref = traj.detach()
        return losses

    @staticmethod
    def select(outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last stage's best trajectory ``[B, T, 3]``, its candidates ``[B, K, T, 3]`` and scores ``[B, K]``."""
        logits, traj = outputs[-1]
        best = logits.argmax(1)
        return traj[torch.arange(len(traj)), best], traj, logits.sigmoid()
