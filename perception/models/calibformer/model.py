"""CalibFormer: LiDAR-camera extrinsic calibration by a correlation transformer.

Xiao, Li, Meng, Li, Ji & Zhang, "CalibFormer: A Transformer-based Automatic LiDAR-Camera Calibration
Network", ICRA 2024 (arXiv:2311.15241). No code was published; this follows the paper's structure,
with LCCNet's conventions for the miscalibration and the evaluation (Lv et al., "LCCNet: LiDAR and
Camera Self-Calibration using Cost Volume Network", CVPRW 2021, github.com/IIPCVLAB/LCCNet):

1. **Inputs**: the camera image and the LiDAR sweep projected through the current (miscalibrated)
   extrinsic into a sparse depth image ``[2, H, W]`` (inverse depth of the nearest point, occupancy),
   both at the model's resolution (:func:`.geometry.depth_image`, through the camera model). Optionally
   (``intensity=True``, our addition) a third channel, the nearest point's LiDAR intensity: ground
   texture (lane markings, kerbs) that the camera sees too, where a flat road's depth is the same
   wherever the LiDAR sits. With ``subpixel=True`` (ours) two more channels, where in its pixel the
   nearest point falls: the rounding to pixels otherwise hides the sub-pixel shifts a few-centimetre
   offset makes at this size.
2. **Feature extractors** (one per modality, same layout): four stride-2 stages to 1/16; the 1/4,
   1/8 and 1/16 features are projected, upsampled and summed into one 1/4-resolution map ``[B, C, H/4, W/4]``
   (multi-layer aggregation into a high-resolution representation). The inverse depth is
   ``min(1, ref_depth / z)``.
3. **Multi-head local correlation**: channels split into ``heads`` groups; per group, the dot product
   of each image feature with the LiDAR features in a ``(2w+1)^2`` window (``w = 4`` cells) →
   ``[B, heads (2w+1)^2, H/4, W/4]``. A second correlation of the 1/16 features (same window: +-64 px
   at 1/16) catches displacements the fine window cannot reach (our addition: at +-10 deg the
   image moves up to ~20 px at 160x96, more than the fine window's +-16 px).
4. **Transformer**: correlation, image and LiDAR features fused and reduced to 1/8 (tokens; the
   coarse correlation added), with a
   positional encoding of each token's *viewing ray* (``camera.unproject``: the network sees the
   intrinsics, so one model serves any focal length and size); an encoder over the tokens, then a
   decoder with two pose queries (rotation, translation) whose outputs regress a unit quaternion
   (``[w, x, y, z]``, starting at the identity) and a translation (in units of ``t_scale`` m).
5. **Iterative refinement** (inference): apply the correction, re-project the sweep, run again
   (``iterations``).
6. **Displacement head and PnP** (``flow=True``; our addition, in the spirit of flow-based calibrators
   such as DXQ-Net): from the same correlations (fine, and coarse upsampled) and features, per 1/4
   cell the image displacement of the LiDAR content of the cell and the scale of a Laplace error on it,
   supervised at every cell the sweep hits (a dense signal, where the pose loss gives six numbers per
   pair). At inference each iteration starts from the decoder's correction and solves, by weighted
   Gauss-Newton over the sweep's points, for the rotation (``pnp="rotation"``) or the rotation and
   translation (``"full"``) that put the points where the displacements say.

The correction's parametrisation (rotation of the LiDAR about its origin in camera axes, shift of the
origin) is in :mod:`.geometry`. **Losses**: quaternion angular distance (geodesic angle of
``q_pred^-1 q_true``), translation (L1 per axis), and a point-cloud reprojection loss (mean 3-D
distance between the sweep placed by the predicted and by the true correction), and with ``flow`` the
displacement's Laplace negative log-likelihood.

Shapes for a batch of ``B`` pairs at ``H x W``: see :meth:`CalibFormer.regress`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from scipy.spatial.transform import Rotation
from torch import nn

from perception.geometry.camera_base import CameraModel
from perception.models.calibformer.data import CalibSample, CalibTarget
from perception.models.calibformer.geometry import (depth_image, quat_angle, quat_from_matrix, quat_normalize,
                                                    quat_to_matrix)


@dataclass
class CalibBatch:
    """Model input: ``image [B, 3, H, W]``, the sweeps ``points`` (``B x [N_b, 3]`` LiDAR frame), their ``cameras``
    (all ``H x W``), ``init [B, 4, 4]`` float64 camera-from-LiDAR, the pairs' ``tokens``, and the points'
    ``intensity`` (``B x [N_b]``; None unless every sample carries it)."""

    image: torch.Tensor
    points: list[torch.Tensor]
    cameras: list[CameraModel]
    init: torch.Tensor
    tokens: list[str]
    intensity: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class CalibPrediction:
    """``cam_from_lidar [4, 4]`` estimated from ``init [4, 4]``; ``steps [K+1, 4, 4]`` the estimate after each iteration
    (``steps[0] = init``); ``aligned``: for a model with an appearance alignment as its last step, whether it was
    taken (False: refused, the step repeats the one before), else None."""

    token: str
    cam_from_lidar: np.ndarray
    init: np.ndarray
    steps: np.ndarray
    aligned: bool | None = None


class CalibPreprocessor(BaseDataPreprocessor):
    """``list[CalibSample]`` → ``dict(inputs=CalibBatch, data_samples=list[CalibTarget | None])``."""

    def forward(self, data: list[CalibSample], training: bool = False) -> dict:
        if not data or not all(isinstance(s, CalibSample) for s in data):
            raise TypeError(f"CalibPreprocessor: expected a non-empty list[CalibSample], got {type(data).__name__}")
        sizes = {tuple(s.inputs.image.shape) for s in data}
        if len(sizes) != 1:
            raise ValueError(f"CalibPreprocessor: a batch needs one image size, got {sorted(sizes)}")
        x = [s.inputs for s in data]
        inten = None
        if all(i.intensity is not None for i in x):
            inten = [torch.from_numpy(i.intensity).to(self.device) for i in x]
        batch = CalibBatch(torch.stack([i.image for i in x]).to(self.device),
                           [torch.from_numpy(i.points).to(self.device) for i in x], [i.camera for i in x],
                           torch.from_numpy(np.stack([i.init for i in x])).to(self.device), [i.token for i in x], inten)
        return {"inputs": batch, "data_samples": [s.target for s in data]}


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class FeatureExtractor(nn.Module):
    """``[B, c_in, H, W]`` → ``[B, out, H/4, W/4]`` (stages at 1/2, 1/4, 1/8, 1/16, the last three aggregated at 1/4)
    and the 1/16 projection ``[B, out, H/16, W/16]`` (for the coarse correlation)."""

    def __init__(self, c_in: int, widths: Sequence[int] = (16, 32, 48, 64), out: int = 48) -> None:
        super().__init__()
        w = list(widths)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, 2), _conv(cout, cout)) for cin, cout in zip([c_in] + w[:-1], w))
        self.lateral = nn.ModuleList(nn.Conv2d(c, out, 1) for c in w[1:])
        self.fuse = _conv(out, out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        size = feats[1].shape[-2:]  # 1/4
        lats = [lat(f) for lat, f in zip(self.lateral, feats[1:])]
        agg = lats[0] + sum(F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in lats[1:])
        return self.fuse(agg), lats[-1]


def local_correlation(a: torch.Tensor, b: torch.Tensor, heads: int, window: int) -> torch.Tensor:
    """Multi-head local correlation of ``a, b [B, C, h, w]``: ``[B, heads (2 window + 1)^2, h, w]``.

    Output channel ``g (2w+1)^2 + (dy + w)(2w+1) + (dx + w)`` is ``<a_g[y, x], b_g[y + dy, x + dx]> / sqrt(C / heads)``
    over head ``g``'s channels (zero outside the map).
    """
    B, C, h, w = a.shape
    if C % heads:
        raise ValueError(f"local_correlation: {C} channels do not split into {heads} heads")
    k = 2 * window + 1
    bp = F.pad(b, (window, window, window, window))
    a = a.view(B, heads, C // heads, h, w)
    out = [(a * bp[:, :, dy:dy + h, dx:dx + w].view(B, heads, C // heads, h, w)).sum(2)
           for dy in range(k) for dx in range(k)]  # (2w+1)^2 x [B, heads, h, w]
    return torch.stack(out, 2).reshape(B, heads * k * k, h, w) / (C // heads) ** 0.5


class FineCorrelation(nn.Module):
    """Image ``[B, c_image, H, W]`` and LiDAR image ``[B, c_depth, H, W]`` → light features at 1/2, their local
    correlation (``heads``, ``window``: +-2 window px at the input size in 2 px steps), each 2x2 block of it stacked
    into one 1/4 cell (``pixel_unshuffle``, so where in the cell a match lies survives) → ``[B, out, h4, w4]``."""

    def __init__(self, c_image: int, c_depth: int, width: int = 16, heads: int = 2, window: int = 3, out: int = 32) -> None:
        super().__init__()
        self.heads, self.window, self.out = heads, window, out
        self.image = nn.Sequential(_conv(c_image, width, 2), _conv(width, width))
        self.depth = nn.Sequential(_conv(c_depth, width, 2), _conv(width, width))
        self.proj = nn.Sequential(nn.Conv2d(4 * heads * (2 * window + 1) ** 2, out, 1), nn.ReLU(inplace=True))

    def forward(self, image: torch.Tensor, depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        c = local_correlation(self.image(image), self.depth(depth), self.heads, self.window)  # [B, K, H/2, W/2]
        c = F.pad(c, (0, c.shape[-1] % 2, 0, c.shape[-2] % 2))  # even, so that 2x2 blocks tile it
        c = F.pixel_unshuffle(c, 2)  # [B, 4 K, ceil(H/4), ceil(W/4)]
        return self.proj(c[..., :size[0], :size[1]])


class CalibFormer(BaseModel):
    """The network and its losses; ``forward(mode="loss" | "predict" | "tensor")`` as every mmengine model here."""

    def __init__(self, widths: Sequence[int] = (16, 32, 48, 64), feat_dim: int = 48, dim: int = 64, heads: int = 4,
                 corr_heads: int = 4, window: int = 4, enc_layers: int = 2, dec_layers: int = 2, t_scale: float = 0.1,
                 iterations: int = 3, max_depth: float = 80.0, ref_depth: float = 2.0, w_rot: float = 30.0,
                 w_trans: float = 20.0, w_pc: float = 2.0, pc_points: int = 1024, flow: bool = False,
                 w_flow: float = 0.5, flow_scale: float = 8.0, pnp: str = "none", pnp_points: int = 2000,
                 intensity: bool = False, subpixel: bool = False, fine: bool = False) -> None:
        super().__init__(data_preprocessor=CalibPreprocessor())
        if pnp not in ("rotation", "full", "none"):
            raise ValueError(f"CalibFormer.pnp: 'rotation', 'full' or 'none', got {pnp!r}")
        self.window, self.corr_heads, self.t_scale = window, corr_heads, t_scale
        self.iterations, self.max_depth, self.ref_depth = iterations, max_depth, ref_depth
        self.w_rot, self.w_trans, self.w_pc, self.pc_points = w_rot, w_trans, w_pc, pc_points
        self.w_flow, self.flow_scale, self.pnp, self.pnp_points = w_flow, flow_scale, pnp, pnp_points
        self.reads_intensity = intensity  # the LiDAR image's third channel; the inputs must carry the intensities
        self.subpixel = subpixel  # two more channels: the nearest point's offset inside its pixel
        self.image_net = FeatureExtractor(3, widths, feat_dim)
        self.depth_net = FeatureExtractor(2 + int(intensity) + 2 * int(subpixel), widths, feat_dim)
        k = (2 * window + 1) ** 2
        self.fuse = nn.Sequential(nn.Conv2d(corr_heads * k + 2 * feat_dim, dim, 1), nn.ReLU(inplace=True),
                                  _conv(dim, dim, 2), _conv(dim, dim))  # 1/4 → 1/8 tokens
        self.coarse = nn.Conv2d(corr_heads * k, dim, 1)  # the 1/16 correlation, added to the 1/8 tokens
        # optional (our addition, needs flow): a correlation at 1/2 for the displacements of a few pixels that the
        # 1/4 cells do not resolve, its 2x2 blocks stacked into each 1/4 cell's channels for the displacement head
        if fine and not flow:
            raise ValueError("CalibFormer: fine=True feeds the displacement head; it needs flow=True")
        self.fine = FineCorrelation(3, 2 + int(intensity) + 2 * int(subpixel)) if fine else None
        extra = self.fine.out if fine else 0
        # optional (our addition): per 1/4 cell, where the LiDAR content of the cell is in the image (px) and the
        # scale b of a Laplace error on it (log b); supervised at the cells the sweep hits, read by the PnP step
        self.flow_head = nn.Sequential(nn.Conv2d(2 * corr_heads * k + 2 * feat_dim + extra, dim, 1),
                                       nn.ReLU(inplace=True), _conv(dim, dim), nn.Conv2d(dim, 3, 3, 1, 1)) if flow else None
        if flow:
            nn.init.zeros_(self.flow_head[-1].weight)
            nn.init.zeros_(self.flow_head[-1].bias)
        self.ray_embed = nn.Sequential(nn.Linear(3, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True),
            enc_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True), dec_layers)
        self.queries = nn.Parameter(torch.randn(2, dim) * 0.02)  # rotation, translation
        self.rot_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 4))
        self.trans_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 3))
        for head in (self.rot_head, self.trans_head):  # start at the identity correction
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        self._rays: dict = {}

    # --- inputs ---------------------------------------------------------------------------------
    def depth(self, batch: CalibBatch, cam_from_lidar: torch.Tensor) -> torch.Tensor:
        """Sparse depth images ``[B, 2 + intensity + 2 subpixel, H, W]`` of the sweeps through
        ``cam_from_lidar [B, 4, 4]``."""
        if self.reads_intensity and batch.intensity is None:
            raise ValueError("CalibFormer(intensity=True) needs the points' intensities: build the inputs with "
                             "calib_input(..., intensity=True) or CalibSimDataset(intensity=True)")
        out = []
        for b, (pts, cam, t) in enumerate(zip(batch.points, batch.cameras, cam_from_lidar)):
            t = t.to(pts.dtype)
            inten = batch.intensity[b] if self.reads_intensity else None
            out.append(depth_image(pts @ t[:3, :3].T + t[:3, 3], cam, self.max_depth, ref_depth=self.ref_depth,
                                   intensity=inten, subpixel=self.subpixel))
        return torch.stack(out)

    def rays(self, camera: CameraModel, h: int, w: int, device) -> torch.Tensor:
        """Unit viewing rays ``[h w, 3]`` through the centres of an ``h x w`` token grid over the image."""
        key = (camera, h, w)
        if key not in self._rays:
            sx, sy = camera.width / w, camera.height / h
            v, u = np.mgrid[0:h, 0:w].astype(np.float64)
            uv = np.stack([(u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5], -1).reshape(-1, 2)
            r, ok = camera.unproject(uv)
            r = np.where(ok[:, None], r, [0.0, 0.0, 1.0])
            if len(self._rays) > 64:  # a bounded cache: cameras seen are few
                self._rays.clear()
            self._rays[key] = torch.from_numpy(r).float()
        return self._rays[key].to(device)

    # --- network --------------------------------------------------------------------------------
    def regress(self, image: torch.Tensor, depth: torch.Tensor, cameras: Sequence[CameraModel]) -> tuple[torch.Tensor, torch.Tensor]:
        """``image [B, 3, H, W]``, ``depth [B, 2, H, W]`` → correction ``q [B, 4]`` (unit, ``w >= 0``), ``t [B, 3]`` m."""
        return self.heads(image, depth, cameras)[:2]

    def heads(self, image: torch.Tensor, depth: torch.Tensor, cameras: Sequence[CameraModel]):
        """:meth:`regress` and, with ``flow``, the displacement field ``[B, 2, H/4, W/4]`` (px at the input size) and
        its Laplace log-scale ``[B, 1, H/4, W/4]`` (None without)."""
        fi, ci = self.image_net(image)  # [B, C, H/4, W/4], [B, C, H/16, W/16]
        fd, cd = self.depth_net(depth)
        corr = local_correlation(fi, fd, self.corr_heads, self.window)  # [B, heads (2w+1)^2, H/4, W/4]
        x = self.fuse(torch.cat([corr, fi, fd], 1))  # [B, D, H/8, W/8]
        B, D, h, w = x.shape
        coarse = local_correlation(ci, cd, self.corr_heads, self.window)  # [B, heads (2w+1)^2, H/16, W/16]
        x = x + F.interpolate(self.coarse(coarse), size=(h, w), mode="bilinear", align_corners=False)
        pos = torch.stack([self.rays(c, h, w, x.device) for c in cameras])  # [B, h w, 3]
        tokens = self.encoder(x.flatten(2).transpose(1, 2) + self.ray_embed(pos))  # [B, h w, D]
        q_out = self.decoder(self.queries.expand(B, -1, -1), tokens)  # [B, 2, D]
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=x.device)
        q = quat_normalize(identity + self.rot_head(q_out[:, 0]))
        t = self.trans_head(q_out[:, 1]) * self.t_scale
        if self.flow_head is None:
            return q, t, None, None
        up = F.interpolate(coarse, size=corr.shape[-2:], mode="bilinear", align_corners=False)
        parts = [corr, up, fi, fd] + ([self.fine(image, depth, corr.shape[-2:])] if self.fine is not None else [])
        fl = self.flow_head(torch.cat(parts, 1))  # [B, 3, H/4, W/4]
        return q, t, fl[:, :2] * self.flow_scale, fl[:, 2:3]

    def _projections(self, points: torch.Tensor, camera: CameraModel, cam_from_lidar: torch.Tensor):
        """``points [N, 3]`` through ``cam_from_lidar`` → ``uv [N, 2]`` and the mask of those the depth image shows."""
        x = points.double() @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]
        uv, ok = camera.project(x)
        return uv, ok & (x[:, 2] > 0.5) & (x[:, 2] < self.max_depth) & camera.in_image(uv)

    @staticmethod
    def _cells(uv: torch.Tensor, camera: CameraModel, h: int, w: int) -> torch.Tensor:
        """Flat index ``[N]`` of the cell of an ``h x w`` grid over the image that holds each pixel ``uv [N, 2]``."""
        return (uv[:, 1].add(0.5).mul(h / camera.height).long().clamp(0, h - 1) * w
                + uv[:, 0].add(0.5).mul(w / camera.width).long().clamp(0, w - 1))

    def flow_targets(self, batch: CalibBatch, gt: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each 1/4 cell's LiDAR points are in the image: the mean of ``uv_true - uv_current`` over the points
        the current extrinsic puts in the cell → ``[B, 2, h, w]`` px, and the cells with points ``[B, 1, h, w]``."""
        out = torch.zeros(len(batch.points), 2, h * w, dtype=torch.float64, device=gt.device)
        cnt = torch.zeros(len(batch.points), 1, h * w, dtype=torch.float64, device=gt.device)
        for b, (pts, cam, init, g) in enumerate(zip(batch.points, batch.cameras, batch.init, gt)):
            uv0, ok0 = self._projections(pts, cam, init)
            uv1, ok1 = self._projections(pts, cam, g)
            ok = ok0 & ok1
            cell = self._cells(uv0[ok], cam, h, w)
            out[b].index_add_(1, cell, (uv1[ok] - uv0[ok]).T)
            cnt[b, 0].index_add_(0, cell, torch.ones_like(cell, dtype=torch.float64))
        hit = cnt > 0
        return (out / cnt.clamp_min(1)).float().reshape(-1, 2, h, w), hit.reshape(-1, 1, h, w)

    def pnp_refine(self, batch: CalibBatch, start: torch.Tensor, q: torch.Tensor, t: torch.Tensor, flow: torch.Tensor,
                   logb: torch.Tensor, iterations: int = 8) -> torch.Tensor:
        """The correction of ``start [B, 4, 4]`` that puts the sweep's points where the flow says they are.

        Each point the depth image shows (up to ``pnp_points``) should land at ``uv_start + flow(cell)``; weighted
        (``1 / b``, Huber at 1 px) Gauss-Newton from the decoder's correction ``(q, t)`` over the rotation
        (``pnp="rotation"``: the decoder's translation kept) or rotation and translation (``"full"``).
        → corrected extrinsics ``[B, 4, 4]`` float64.
        """
        out = []
        h, w = flow.shape[-2:]
        for b, (pts, cam, s0) in enumerate(zip(batch.points, batch.cameras, start)):
            sel = pts[torch.linspace(0, len(pts) - 1, min(self.pnp_points, len(pts)), device=pts.device).long()].double()
            uv0, ok = self._projections(sel, cam, s0)
            if int(ok.sum()) < 6:  # too few points to solve: the decoder's correction
                out.append(self.correct(s0[None], q[b:b + 1].double(), t[b:b + 1].double())[0])
                continue
            sel, uv0 = sel[ok], uv0[ok]
            cell = self._cells(uv0, cam, h, w)
            target = uv0 + flow[b].reshape(2, -1)[:, cell].T.double()
            wt = torch.exp(-logb[b].reshape(-1)[cell].double())
            R0, t0 = s0[:3, :3], s0[:3, 3]
            X = sel @ R0.T  # rotated about the LiDAR origin, not yet placed
            rot = Rotation.from_quat(q[b].detach().double().cpu().numpy()[[1, 2, 3, 0]]).as_rotvec()  # (x, y, z, w)
            theta = torch.cat([torch.from_numpy(rot).to(X), t[b].double()])  # [6]
            free = 3 if self.pnp == "rotation" else 6

            def residual(th):
                uv, _ = cam.project(X @ _rotmat(th[:3]).T + t0 + th[3:])
                return uv - target  # [N, 2]

            for _ in range(iterations):
                r = residual(theta)
                norm = r.norm(dim=1)
                huber = torch.where(norm > 1.0, 1.0 / norm.clamp_min(1e-9), torch.ones_like(norm))
                sw = (wt * huber).sqrt()[:, None]
                J = torch.stack([(residual(theta + d) - r) / 1e-6 for d in torch.eye(6, dtype=theta.dtype)[:free] * 1e-6],
                                -1)  # [N, 2, free]
                Jw, rw = (J * sw[..., None]).reshape(-1, free), (r * sw).reshape(-1)
                step = torch.linalg.solve(Jw.T @ Jw + 1e-6 * torch.eye(free, dtype=Jw.dtype), -Jw.T @ rw)
                theta = theta.clone()
                theta[:free] += step
                if step.norm() < 1e-7:
                    break
            est = s0.clone()
            est[:3, :3] = _rotmat(theta[:3]) @ R0
            est[:3, 3] = t0 + theta[3:]
            out.append(est)
        return torch.stack(out)

    @staticmethod
    def correct(cam_from_lidar: torch.Tensor, q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``cam_from_lidar [B, 4, 4]`` corrected by ``(q [B, 4], t [B, 3])``: ``[R_q R | t_0 + t]``."""
        out = cam_from_lidar.clone()
        out[:, :3, :3] = quat_to_matrix(q.to(out.dtype)) @ cam_from_lidar[:, :3, :3]
        out[:, :3, 3] = cam_from_lidar[:, :3, 3] + t.to(out.dtype)
        return out

    def refine(self, batch: CalibBatch, iterations: int | None = None) -> torch.Tensor:
        """Iterative refinement: ``[K+1, B, 4, 4]`` estimates from ``batch.init`` (index 0) over ``K`` iterations."""
        steps = [batch.init]
        for _ in range(self.iterations if iterations is None else iterations):
            q, t, flow, logb = self.heads(batch.image, self.depth(batch, steps[-1]), batch.cameras)
            if flow is None or self.pnp == "none":
                steps.append(self.correct(steps[-1], q.double(), t.double()))
            else:
                steps.append(self.pnp_refine(batch, steps[-1], q, t, flow, logb))
        return torch.stack(steps)

    # --- mmengine interface ---------------------------------------------------------------------
    def forward(self, inputs: CalibBatch, data_samples: list[CalibTarget | None] | None = None, mode: str = "tensor"):
        if mode == "loss":
            if data_samples is None or any(t is None for t in data_samples):
                raise ValueError("CalibFormer.loss: every sample needs its true extrinsic")
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.predict(inputs)
        if mode == "tensor":
            return self.regress(inputs.image, self.depth(inputs, inputs.init), inputs.cameras)
        raise ValueError(f"CalibFormer: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    def targets(self, batch: CalibBatch, truth: list[CalibTarget]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """True corrections ``q [B, 4]``, ``t [B, 3]`` and the true extrinsics ``[B, 4, 4]`` (float64)."""
        gt = torch.from_numpy(np.stack([np.asarray(t.cam_from_lidar, np.float64) for t in truth])).to(batch.init.device)
        r = gt[:, :3, :3] @ batch.init[:, :3, :3].transpose(1, 2)
        q = torch.from_numpy(quat_from_matrix(r.cpu().numpy())).to(gt.device)
        return q.float(), (gt[:, :3, 3] - batch.init[:, :3, 3]).float(), gt

    def loss(self, batch: CalibBatch, truth: list[CalibTarget]) -> dict[str, torch.Tensor]:
        q_gt, t_gt, gt = self.targets(batch, truth)
        q, t, flow, logb = self.heads(batch.image, self.depth(batch, batch.init), batch.cameras)
        est = self.correct(batch.init.float(), q, t)  # [B, 4, 4]
        pc = []
        for pts, e, g in zip(batch.points, est, gt.float()):
            p = pts[torch.linspace(0, len(pts) - 1, min(self.pc_points, len(pts)), device=pts.device).long()]
            pc.append(((p @ e[:3, :3].T + e[:3, 3]) - (p @ g[:3, :3].T + g[:3, 3])).norm(dim=1).mean())
        losses = {"loss_rot": self.w_rot * quat_angle(q, q_gt).mean(),
                  "loss_trans": self.w_trans * (t - t_gt).abs().sum(1).mean(),
                  "loss_pc": self.w_pc * torch.stack(pc).mean()}
        if flow is not None:  # Laplace negative log-likelihood of the displacement, at the cells with points
            target, hit = self.flow_targets(batch, gt, *flow.shape[-2:])
            nll = (flow - target).abs().sum(1, keepdim=True) * torch.exp(-logb) + 2 * logb
            losses["loss_flow"] = self.w_flow * (nll * hit).sum() / hit.sum().clamp_min(1)
        return losses

    @torch.no_grad()
    def predict(self, batch: CalibBatch, iterations: int | None = None) -> list[CalibPrediction]:
        steps = self.refine(batch, iterations).cpu().numpy()  # [K+1, B, 4, 4]
        return [CalibPrediction(tok, steps[-1, b], steps[0, b], steps[:, b]) for b, tok in enumerate(batch.tokens)]


def _rotmat(v: torch.Tensor) -> torch.Tensor:
    """Rotation vector ``[3]`` → ``[3, 3]`` (Rodrigues; differentiable, exact at 0)."""
    th2 = (v * v).sum()
    K = torch.zeros(3, 3, dtype=v.dtype, device=v.device)
    K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -v[2], v[1], v[2], -v[0], -v[1], v[0]
    small = th2 < 1e-12
    th = th2.clamp_min(1e-24).sqrt()
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / th2.clamp_min(1e-24))
    return torch.eye(3, dtype=v.dtype, device=v.device) + a * K + b * (K @ K)
