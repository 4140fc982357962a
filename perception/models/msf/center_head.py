"""CenterPoint's centre head: per-class heatmaps and box attributes regressed at the peaks.

Yin, Zhou & Krähenbühl, "Center-based 3D Object Detection and Tracking" (CVPR 2021), Sec. 3-4:

- a shared ``Conv3x3 + BN + ReLU``, then one small head per attribute group (``Conv3x3 + BN + ReLU +
  Conv3x3``): ``heatmap [B, K, h, w]`` and ``regression [B, R, h, w]`` with the channels
  :data:`REG_FIELDS` = (dx, dy offset of the centre inside its cell, z of the *gravity* centre,
  log l, log w, log h, sin yaw, cos yaw) plus (vx, vy) m/s when ``with_velocity`` (R = 8 or 10);
- targets: a Gaussian peak per box on its class's heatmap, radius from CornerNet's
  ``gaussian_radius`` (min overlap 0.1, at least ``min_radius`` cells), as CenterPoint draws them;
  :func:`perception.models.bev_center.gaussian_focal_loss` on the heatmap, L1 on the attributes at the
  centre cells (``code_weights``, velocity 0.2 as in the paper's nuScenes config), both normalised by
  the number of objects;
- decoding: 3x3 max-pool peaks (the heatmap NMS of CenterNet / CenterPoint), top ``max_detections``
  above ``score_threshold`` → :class:`Detections` with ``Boxes3D [N, 9]`` (``[N, 7]`` without velocity).

Cells follow the :class:`BevGrid` convention: ``heatmap[b, k, i, j]`` is the cell at
``x = x_min + (i + 0.5) cell_x``, ``y = y_min + (j + 0.5) cell_y``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from perception.models.bev_center import gaussian_focal_loss, heatmap_peaks
from perception.structures import Boxes3D, Detections, Targets

__all__ = ["CenterHead", "REG_FIELDS", "VEL_FIELDS", "gaussian_radius"]

REG_FIELDS = ("dx", "dy", "z", "log_l", "log_w", "log_h", "sin", "cos")
VEL_FIELDS = ("vx", "vy")
_GROUPS = (("offset", 2), ("z", 1), ("size", 3), ("yaw", 2))


def gaussian_radius(length: float, width: float, min_overlap: float = 0.1) -> float:
    """CornerNet's radius (in cells) within which a shifted box of ``length x width`` cells keeps ``min_overlap`` IoU."""
    b1 = length + width
    c1 = width * length * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (length + width)
    c2 = (1 - min_overlap) * width * length
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (length + width)
    c3 = (min_overlap - 1) * width * length
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _branch(cin: int, mid: int, cout: int, momentum: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid, momentum=momentum),
                         nn.ReLU(), nn.Conv2d(mid, cout, 3, padding=1))


class CenterHead(nn.Module):
    """BEV features ``[B, in_channels, h, w]`` → ``(heatmap [B, K, h, w], regression [B, R, h, w])``.

    ``origin = (x_min, y_min)`` and ``cell = (cell_x, cell_y)`` metres place the output cells in the
    ego frame (the grid's origin; voxel size x the model's total stride).
    """

    def __init__(self, in_channels: int, classes: Sequence[str], origin: Sequence[float], cell: Sequence[float],
                 with_velocity: bool = True, shared_channels: int = 64, head_channels: int = 64,
                 min_radius: int = 2, min_overlap: float = 0.1, reg_weight: float = 0.25,
                 code_weights: Sequence[float] | None = None, max_detections: int = 500,
                 score_threshold: float = 0.1, momentum: float = 0.01) -> None:
        super().__init__()
        self.classes = tuple(classes)
        self.origin = (float(origin[0]), float(origin[1]))
        self.cell = (float(cell[0]), float(cell[1]))
        self.with_velocity = bool(with_velocity)
        self.fields = REG_FIELDS + (VEL_FIELDS if self.with_velocity else ())
        R = len(self.fields)
        cw = [1.0] * 8 + [0.2] * (R - 8) if code_weights is None else [float(w) for w in code_weights]
        if len(cw) != R:
            raise ValueError(f"CenterHead: code_weights needs {R} entries ({self.fields}), got {len(cw)}")
        self.register_buffer("code_weights", torch.tensor(cw), persistent=False)
        self.min_radius, self.min_overlap, self.reg_weight = int(min_radius), float(min_overlap), float(reg_weight)
        self.max_detections, self.score_threshold = int(max_detections), float(score_threshold)
        self.shared = nn.Sequential(nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(shared_channels, momentum=momentum), nn.ReLU())
        self.heatmap = _branch(shared_channels, head_channels, len(self.classes), momentum)
        groups = _GROUPS + ((("velocity", 2),) if self.with_velocity else ())
        self.reg_heads = nn.ModuleDict({name: _branch(shared_channels, head_channels, n, momentum) for name, n in groups})
        nn.init.constant_(self.heatmap[-1].bias, -2.19)  # prior 0.1, as CenterNet / CenterPoint

    @property
    def n_reg(self) -> int:
        return len(self.fields)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.shared(x)
        return self.heatmap(x), torch.cat([h(x) for h in self.reg_heads.values()], 1)

    # --- targets and losses -------------------------------------------------------------------
    def targets(self, boxes: Boxes3D, shape: tuple[int, int]):
        """One frame: ``heat [K, h, w]``, ``centres [M, 3]`` long (class, i, j), ``reg [M, R]``, ``weight [M, R]``.

        Velocity weights are 0 for boxes without velocity (7-column ground truth).
        """
        K, (h, w) = len(self.classes), shape
        heat = torch.zeros(K, h, w)
        label = np.array([self.classes.index(n) if n in self.classes else -1 for n in boxes.names], np.int64)
        t = boxes.tensor.astype(np.float64)
        u = (t[:, 0] - self.origin[0]) / self.cell[0]
        v = (t[:, 1] - self.origin[1]) / self.cell[1]
        keep = (label >= 0) & (u >= 0) & (u < h) & (v >= 0) & (v < w)
        ii, jj = np.arange(h)[:, None], np.arange(w)[None, :]
        centres, regs = [], []
        for k in np.flatnonzero(keep):
            ci, cj = int(u[k]), int(v[k])
            r = max(self.min_radius, int(gaussian_radius(t[k, 3] / self.cell[0], t[k, 4] / self.cell[1], self.min_overlap)))
            sigma = (2 * r + 1) / 6
            di, dj = ii - ci, jj - cj
            g = np.exp(-(di**2 + dj**2) / (2 * sigma**2)) * ((np.abs(di) <= r) & (np.abs(dj) <= r))
            heat[label[k]] = torch.maximum(heat[label[k]], torch.from_numpy(g).float())
            centres.append((label[k], ci, cj))
            row = [u[k] - ci, v[k] - cj, t[k, 2] + t[k, 5] / 2, *np.log(np.maximum(t[k, 3:6], 1e-3)),
                   np.sin(t[k, 6]), np.cos(t[k, 6])]
            if self.with_velocity:
                row += list(t[k, 7:9]) if t.shape[1] == 9 else [0.0, 0.0]
            regs.append(row)
        R = self.n_reg
        reg = torch.tensor(np.array(regs), dtype=torch.float32).reshape(-1, R)
        weight = torch.ones(len(regs), R)
        if self.with_velocity and t.shape[1] != 9:
            weight[:, 8:] = 0
        return heat, torch.tensor(centres, dtype=torch.long).reshape(-1, 3), reg, weight

    def loss(self, heat: torch.Tensor, reg: torch.Tensor, data_samples: Sequence[Targets]) -> dict[str, torch.Tensor]:
        """``loss_heatmap`` (Gaussian focal) and ``loss_bbox`` (weighted L1), each per object."""
        heat_t, reg_losses, n_pos = [], [], 0
        for b, tg in enumerate(data_samples):
            ht, centres, rt, wt = self.targets(tg.boxes, tuple(heat.shape[2:]))
            heat_t.append(ht)
            if len(centres):
                pred = reg[b, :, centres[:, 1], centres[:, 2]].T  # [M, R]
                err = (pred - rt.to(reg.device)).abs() * wt.to(reg.device) * self.code_weights
                reg_losses.append(err.sum())
                n_pos += len(centres)
        norm = max(n_pos, 1)
        loss_heat = gaussian_focal_loss(heat, torch.stack(heat_t).to(heat.device)) / norm
        loss_reg = (torch.stack(reg_losses).sum() if reg_losses else reg.sum() * 0) / norm
        return {"loss_heatmap": loss_heat, "loss_bbox": self.reg_weight * loss_reg}

    # --- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, heat: torch.Tensor, reg: torch.Tensor) -> list[Detections]:
        """Heatmap peaks → one :class:`Detections` per frame (ego frame, bottom-centre boxes)."""
        out = []
        for b, (scores, cls, i, j) in enumerate(heatmap_peaks(heat, self.max_detections, self.score_threshold)):
            r = reg[b, :, i, j].T.double()  # [M, R]
            x = self.origin[0] + (i + r[:, 0]) * self.cell[0]
            y = self.origin[1] + (j + r[:, 1]) * self.cell[1]
            size = r[:, 3:6].clamp(max=5.0).exp()
            cols = [x, y, r[:, 2] - size[:, 2] / 2, size[:, 0], size[:, 1], size[:, 2], torch.atan2(r[:, 6], r[:, 7])]
            if self.with_velocity:
                cols += [r[:, 8], r[:, 9]]
            tensor = torch.stack(cols, 1).float().cpu().numpy()
            boxes = Boxes3D(tensor, cls.cpu().numpy().astype(np.int64), self.classes, "ego")
            out.append(Detections(boxes, scores.cpu().numpy()))
        return out
