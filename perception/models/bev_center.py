"""BevCenterNet: a small CenterPoint-style LiDAR detector on a pillar BEV grid.

Yin, Zhou & Krähenbühl, "Center-based 3D Object Detection and Tracking" (CVPR 2021): objects are
peaks of a per-class centre heatmap on the BEV grid, with box attributes regressed at the peak;
Zhou, Wang & Krähenbühl, "Objects as Points" (2019) for the Gaussian focal loss. This is the
smallest model that exercises the whole engine (typed batches in, :class:`Detections` out,
losses, checkpoints, metrics) and a baseline the paper models are compared with.

Pipeline (shapes for a batch of ``B`` frames, grid ``nx x ny`` from :class:`BevGrid`):

- :class:`BevPillarPreprocessor`: ``list[Sample]`` → :class:`BevBatch` with ``features [B, 6, nx, ny]``
  (occupancy, log(1+count), mean/max/min z, mean intensity per pillar, via :func:`dynamic_voxelize`
  and :func:`dynamic_scatter`) and the targets kept apart (ground truth never enters the features);
- :class:`BevCenterNet`: conv stem at full resolution, one stride-2 stage, heads at stride 2:
  ``heatmap [B, K, nx/2, ny/2]`` and ``regression [B, 8, nx/2, ny/2]`` = (dx, dy offset in cells,
  bottom z, log l, log w, log h, sin yaw, cos yaw).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from perception.geometry.grid import BevGrid, as_grid
from perception.ops.scatter import dynamic_scatter
from perception.ops.voxelize import dynamic_voxelize
from perception.structures import Boxes3D, Detections, Frame, Sample, Targets

N_FEATURES = 6
N_REG = 8


@dataclass
class BevBatch:
    """Model input: ``features [B, 6, nx, ny]`` float32 and the frames they came from (for metadata)."""

    features: torch.Tensor
    frames: list[Frame]
    n_nonfinite: list[int]  # per frame: points with a non-finite coordinate, left out
    n_outside: list[int]  # per frame: points outside the grid / z range


class BevPillarPreprocessor(BaseDataPreprocessor):
    """``list[Sample]`` → ``dict(inputs=BevBatch, data_samples=list[Targets | None])``."""

    def __init__(self, grid: BevGrid | dict, z_range: Sequence[float] = (-3.0, 5.0)) -> None:
        super().__init__()
        self.grid = as_grid(grid)
        self.z_range = (float(z_range[0]), float(z_range[1]))

    def pillars(self, frame: Frame) -> tuple[torch.Tensor, int, int]:
        """One frame's ``[6, nx, ny]`` pillar features, and its non-finite / outside point counts."""
        g, (z0, z1) = self.grid, self.z_range
        nx, ny = g.shape
        pts = torch.from_numpy(frame.points_in_ego())  # [N, C]
        intensity = pts[:, 3] if pts.shape[1] > 3 else torch.zeros(len(pts))
        pcr = (g.x_min, g.y_min, z0, g.x_min + nx * g.resolution, g.y_min + ny * g.resolution, z1)
        coors, n_bad, n_out = dynamic_voxelize(pts[:, :3].contiguous(), (g.resolution, g.resolution, z1 - z0),
                                               pcr, return_dropped=True)  # [N, 3] (z, y, x)
        out = torch.zeros(N_FEATURES, nx, ny)
        if (coors[:, 0] >= 0).any():
            z = torch.nan_to_num(pts[:, 2:3])  # dropped points have coors -1 and are ignored
            mean_in = torch.cat([z, torch.nan_to_num(intensity)[:, None], torch.ones_like(z)], 1)
            mean, vco, p2v = dynamic_scatter(mean_in, coors, "mean")
            zmax, _, _ = dynamic_scatter(torch.cat([z, -z], 1), coors, "max")
            counts = torch.bincount(p2v[p2v >= 0], minlength=len(vco)).float()
            i, j = vco[:, 2].long(), vco[:, 1].long()
            out[0, i, j] = 1.0
            out[1, i, j] = torch.log1p(counts)
            out[2, i, j] = mean[:, 0]
            out[3, i, j] = zmax[:, 0]
            out[4, i, j] = -zmax[:, 1]
            out[5, i, j] = mean[:, 1]
        return out, n_bad, n_out

    def forward(self, data: list[Sample], training: bool = False) -> dict:
        if not data or not all(isinstance(s, Sample) for s in data):
            raise TypeError(f"BevPillarPreprocessor: expected a non-empty list[Sample], got {type(data).__name__}")
        feats, bad, out = zip(*(self.pillars(s.frame) for s in data))
        batch = BevBatch(torch.stack(feats).to(self.device), [s.frame for s in data], list(bad), list(out))
        return {"inputs": batch, "data_samples": [s.targets for s in data]}


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BevCenterNet(BaseModel):
    """CenterPoint-style heads on a two-stage BEV CNN; ``classes`` index the heatmap channels."""

    def __init__(self, grid: BevGrid | dict, classes: Sequence[str], z_range: Sequence[float] = (-3.0, 5.0),
                 width: int = 32, max_detections: int = 100, score_threshold: float = 0.1,
                 reg_weight: float = 0.25) -> None:
        super().__init__(data_preprocessor=BevPillarPreprocessor(grid, z_range))
        self.grid = as_grid(grid)
        self.classes = tuple(classes)
        self.max_detections, self.score_threshold, self.reg_weight = max_detections, score_threshold, reg_weight
        self.stride = 2
        self.backbone = nn.Sequential(_block(N_FEATURES, width), _block(width, width),
                                      _block(width, 2 * width, 2), _block(2 * width, 2 * width), _block(2 * width, 2 * width))
        self.heatmap = nn.Conv2d(2 * width, len(self.classes), 3, padding=1)
        self.regression = nn.Conv2d(2 * width, N_REG, 3, padding=1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # prior 0.1, as CenterNet

    @property
    def out_shape(self) -> tuple[int, int]:
        nx, ny = self.grid.shape
        return (nx + 1) // 2, (ny + 1) // 2

    def forward(self, inputs: BevBatch, data_samples: list[Targets | None] | None = None, mode: str = "tensor"):
        x = self.backbone(inputs.features)  # [B, 2w, nx/2, ny/2]
        heat, reg = self.heatmap(x), self.regression(x)
        if mode == "tensor":
            return heat, reg
        if mode == "loss":
            if data_samples is None or any(t is None for t in data_samples):
                raise ValueError("BevCenterNet.loss: every sample needs targets")
            return self.loss(heat, reg, data_samples)
        if mode == "predict":
            return self.decode(heat, reg)
        raise ValueError(f"BevCenterNet: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    # --- targets and losses -------------------------------------------------------------------
    def targets(self, targets: Targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``heat [K, h, w]`` Gaussian peaks, ``centres [M, 3]`` (class, i, j) and ``reg [M, 8]`` for one frame."""
        K, (h, w) = len(self.classes), self.out_shape
        cell = self.grid.resolution * self.stride
        heat = torch.zeros(K, h, w)
        boxes = targets.boxes
        names = boxes.names
        label = np.array([self.classes.index(n) if n in self.classes else -1 for n in names], np.int64)
        t = boxes.tensor.astype(np.float64)
        u = (t[:, 0] - self.grid.x_min) / cell
        v = (t[:, 1] - self.grid.y_min) / cell
        keep = (label >= 0) & (u >= 0) & (u < h) & (v >= 0) & (v < w)
        ii, jj = np.arange(h)[:, None], np.arange(w)[None, :]
        centres, regs = [], []
        for k in np.flatnonzero(keep):
            ci, cj = int(u[k]), int(v[k])
            sigma = max(0.5, min(t[k, 3], t[k, 4]) / cell / 3.0)
            g = torch.from_numpy(np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / (2 * sigma**2))).float()
            heat[label[k]] = torch.maximum(heat[label[k]], g)
            centres.append((label[k], ci, cj))
            regs.append((u[k] - ci, v[k] - cj, t[k, 2], *np.log(np.maximum(t[k, 3:6], 1e-3)),
                         np.sin(t[k, 6]), np.cos(t[k, 6])))
        return (heat, torch.tensor(centres, dtype=torch.long).reshape(-1, 3),
                torch.tensor(np.array(regs), dtype=torch.float32).reshape(-1, N_REG))

    def loss(self, heat: torch.Tensor, reg: torch.Tensor, data_samples: list[Targets]) -> dict[str, torch.Tensor]:
        heat_t, reg_losses, n_pos = [], [], 0
        for b, tg in enumerate(data_samples):
            ht, centres, rt = self.targets(tg)
            heat_t.append(ht)
            if len(centres):
                pred = reg[b, :, centres[:, 1], centres[:, 2]].T  # [M, 8]
                reg_losses.append(F.l1_loss(pred, rt.to(reg.device), reduction="sum"))
                n_pos += len(centres)
        heat_t = torch.stack(heat_t).to(heat.device)
        norm = max(n_pos, 1)
        loss_heat = gaussian_focal_loss(heat, heat_t) / norm
        loss_reg = (torch.stack(reg_losses).sum() if reg_losses else reg.sum() * 0) / (norm * N_REG)
        return {"loss_heatmap": loss_heat, "loss_bbox": self.reg_weight * loss_reg}

    # --- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, heat: torch.Tensor, reg: torch.Tensor) -> list[Detections]:
        """Peaks of the heatmap (3x3 max-pool NMS), top ``max_detections`` above ``score_threshold``."""
        cell = self.grid.resolution * self.stride
        out = []
        for b, (scores, cls, i, j) in enumerate(heatmap_peaks(heat, self.max_detections, self.score_threshold)):
            r = reg[b, :, i, j].T.double()  # [M, 8]
            x = self.grid.x_min + (i + r[:, 0]) * cell
            y = self.grid.y_min + (j + r[:, 1]) * cell
            size = r[:, 3:6].clamp(max=5.0).exp()
            yaw = torch.atan2(r[:, 6], r[:, 7])
            tensor = torch.stack([x, y, r[:, 2], size[:, 0], size[:, 1], size[:, 2], yaw], 1).float().cpu().numpy()
            boxes = Boxes3D(tensor, cls.cpu().numpy().astype(np.int64), self.classes, "ego")
            out.append(Detections(boxes, scores.cpu().numpy()))
        return out


def heatmap_peaks(heat: torch.Tensor, max_detections: int, score_threshold: float) -> list[tuple[torch.Tensor, ...]]:
    """Per frame of ``heat [B, K, h, w]`` (logits): ``(scores, class, i, j)`` of the top ``max_detections``
    local maxima (3x3 max-pool NMS, CenterNet) scoring above ``score_threshold``."""
    B, K, h, w = heat.shape
    prob = heat.sigmoid()
    peaks = prob * (F.max_pool2d(prob, 3, 1, 1) == prob)
    out = []
    for b in range(B):
        scores, idx = peaks[b].reshape(-1).topk(min(max_detections, K * h * w))
        keep = scores > score_threshold
        scores, idx = scores[keep], idx[keep]
        cls, ij = idx // (h * w), idx % (h * w)
        out.append((scores, cls, ij // w, ij % w))
    return out


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss on a Gaussian target (sum over cells; positives are cells where target == 1)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p**alpha * (1 - target) ** gamma * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()
