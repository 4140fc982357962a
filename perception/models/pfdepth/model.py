"""PFDepth: joint depth for any mix of pinhole and fisheye cameras through a Gaussian-splatted volume.

Zhang, Xu, Zhang, Zhang, Tan, Gong, Xie, Ma, "PFDepth: Heterogeneous Pinhole-Fisheye Joint Depth
Estimation via Distortion-aware Gaussian-Splatted Volumetric Fusion", ACM MM 2025 (arXiv 2509.26008).
The paper's stages, as built here (no public code; sizes are ours):

1. **Image encoding**: one encoder shared by every view (:class:`ViewEncoder`), made camera-aware by
   each feature pixel's unit ray and a pinhole/fisheye embedding; a per-pixel categorical depth
   distribution over ``bins`` log-spaced depths (the depth-aware weights of step 2).
2. **Distortion-aware lifting** (:mod:`.views`): every voxel centre is projected through each view's
   *own* camera model (no undistortion), features are sampled where it lands, only inside the
   valid-FOV mask, and weighted by that view's predicted probability that the surface lies at the
   voxel's range from it.
3. **Heterogeneous Spatial Fusion**: the per-view volumes are averaged with those weights; the number of
   views that see a voxel and their total weight go in as channels, so the 3-D convolutions that
   follow treat overlapping and single-view (non-overlapping) regions differently.
4. **Latent 3-D Gaussians**: ``G`` learnable Gaussians anchored on a coarse lattice carry a latent
   code; an MLP over the code and the fused feature at the anchor moves, stretches, turns and weights
   each, and gives its feature vector; they are splatted into the volume with
   :func:`~perception.ops.gaussian_splat.gaussian_splat_volume` (differentiable) and added to it.
5. **Rendering**: a density and features are decoded from the volume; each view's rays (from its own
   ``unproject``) sample them at ``samples`` log-spaced ranges, and NeRF-style volume rendering gives
   a range per feature pixel (the transmittance left at the end of the volume goes to a per-pixel
   far range predicted from the image). A light per-view refinement (two convolutions at stride 4,
   one at stride 2 over the stem) corrects the log range; pinholes output z = range * ray_z.
6. **Loss**: L1 on log depth over the valid ground truth inside each view's field of view (fisheye
   corners masked), on the refined and (weight ``render_weight``) the rendered depth, plus
   cross-entropy of the depth distribution against the ground-truth bin (``bin_weight``).

``baseline=True`` trains, in the same steps and on the same batches, a per-view monocular network
of similar size (:class:`MonoDepth`: the same encoder design with its own weights, the same rays and
view embedding, a 2-D depth head and the same stride-2 refinement), with no volume: the comparison
the README reports. Its parameters are separate; its loss is summed in but shares no gradient.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from perception.geometry.grid import VoxelGrid
from perception.models.gaussian_fusion.encoders import PyramidEncoder
from perception.models.pfdepth.views import (
    FISHEYE, PINHOLE, DepthInputs, GeometryCache, ViewBatch, build_inputs,
)
from perception.ops.gaussian_splat import gaussian_splat_volume
from perception.structures import DepthMap, Frame, Sample, Targets
from perception.structures.depth import DepthOutput

KINDS = (PINHOLE, FISHEYE)


def as_voxel_grid(grid: VoxelGrid | dict) -> VoxelGrid:
    return grid if isinstance(grid, VoxelGrid) else VoxelGrid(**grid)


class PFDepthPreprocessor(BaseDataPreprocessor):
    """``list[Sample]`` → ``dict(inputs=DepthInputs, data_samples=list[Targets | None])``."""

    def __init__(self, cameras: Sequence[str], sizes: dict, grid: VoxelGrid, stride: int) -> None:
        super().__init__()
        self.cameras, self.grid, self.stride = tuple(cameras), grid, int(stride)
        self.sizes = {k: (int(v[0]), int(v[1])) for k, v in sizes.items()}
        for k, (w, h) in self.sizes.items():
            if w % (2 * stride) or h % (2 * stride):
                raise ValueError(f"PFDepth: {k} size {w}x{h} must be a multiple of {2 * stride}")
        self.cache = GeometryCache()

    def forward(self, data: list[Sample], training: bool = False) -> dict:
        if not data or not all(isinstance(s, Sample) for s in data):
            raise TypeError(f"PFDepthPreprocessor: expected a non-empty list[Sample], got {type(data).__name__}")
        x = build_inputs([s.frame for s in data], self.cameras, self.sizes, self.grid, self.stride, self.cache)
        return {"inputs": x.to(self.device), "data_samples": [s.targets for s in data]}


class ViewEncoder(nn.Module):
    """``[B, 3, H, W]`` + rays ``[B, h, w, 3]`` → features ``[B, dim, h, w]`` (stride 4), stem ``[B, w0, H/2, W/2]``."""

    def __init__(self, widths: Sequence[int], dim: int) -> None:
        super().__init__()
        self.pyramid = PyramidEncoder(3, tuple(widths), dim)
        self.kind_embed = nn.Parameter(torch.zeros(len(KINDS), dim))
        self.mix = nn.Sequential(nn.Conv2d(dim + 3, dim, 3, 1, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))

    def forward(self, image: torch.Tensor, rays_cam: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pyramid
        stem = p.stem(image)
        x, levels = stem, []
        for stage, proj in zip(p.stages, p.proj):
            x = stage(x)
            levels.append(proj(x))
        feat = levels[0]
        for lvl in levels[1:]:
            feat = feat + F.interpolate(lvl, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        feat = feat + self.kind_embed[KINDS.index(kind)][None, :, None, None]
        return self.mix(torch.cat([feat, rays_cam.permute(0, 3, 1, 2)], 1)), stem


class UpRefine(nn.Module):
    """Log depth at stride 4 ``[B, 1, h, w]`` → full resolution ``[B, 1, H, W]``, corrected at stride 2 from the stem."""

    def __init__(self, stem_width: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(stem_width + 1, hidden, 3, 1, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, 1, 3, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, log_depth: torch.Tensor, stem: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        up = F.interpolate(log_depth, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        up = up + self.net(torch.cat([stem, up], 1))
        return F.interpolate(up, size=size, mode="bilinear", align_corners=False)


class Res3d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv3d(c, c, 3, 1, 1), nn.Conv3d(c, c, 3, 1, 1)
        self.na, self.nb = nn.GroupNorm(4, c), nn.GroupNorm(4, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.nb(self.b(torch.relu(self.na(self.a(x))))))


def grid_normalise(p: torch.Tensor, grid: VoxelGrid) -> torch.Tensor:
    """Ego xyz ``[..., 3]`` → ``grid_sample`` coordinates ``(z, y, x)`` in [-1, 1] of a ``[C, X, Y, Z]`` volume."""
    lo = p.new_tensor(grid.origin)
    hi = p.new_tensor((grid.x_max, grid.y_max, grid.z_max))
    n = (p - lo) / (hi - lo) * 2 - 1
    return n.flip(-1)


def sample_volume(vol: torch.Tensor, pts: torch.Tensor, grid: VoxelGrid) -> torch.Tensor:
    """``vol [B, C, X, Y, Z]`` at ego points ``pts [B, P, 3]`` (trilinear, zero outside) → ``[B, C, P]``."""
    g = grid_normalise(pts, grid)[:, :, None, None]                      # [B, P, 1, 1, 3]
    return F.grid_sample(vol, g, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0, 0]


@dataclass
class ViewResult:
    """Per view slot: refined log range ``[B, 1, H, W]``, rendered log range ``[B, 1, H, W]``, bin logits ``[B, D, h, w]``."""

    log_range: torch.Tensor
    log_render: torch.Tensor | None
    bin_logits: torch.Tensor | None


class MonoDepth(nn.Module):
    """Per-view monocular baseline: the same encoder design, a 2-D head, the same stride-2 refinement."""

    def __init__(self, widths: Sequence[int], dim: int, head_layers: int = 3, init_depth: float = 10.0) -> None:
        super().__init__()
        self.encoder = ViewEncoder(widths, dim)
        layers = []
        for _ in range(head_layers):
            layers += [nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*layers, nn.Conv2d(dim, 1, 1))
        nn.init.constant_(self.head[-1].bias, math.log(init_depth))
        self.up = UpRefine(widths[0])

    def forward(self, v: ViewBatch) -> ViewResult:
        feat, stem = self.encoder(v.image, v.rays_cam, v.kind)
        return ViewResult(self.up(self.head(feat), stem, v.image.shape[-2:]), None, None)


class PFDepth(BaseModel):
    """The model (see the module docstring); ``forward`` follows mmengine's ``mode`` convention.

    Args:
        grid: the ego-centred :class:`VoxelGrid` (or its kwargs): the volume's extent and voxel size.
        cameras: the view slots, by camera name, in order. sizes: ``(W, H)`` per view type.
        widths / dim: the encoder's stage widths and feature width. volume_dim: the volume's channels.
        bins / depth_range: the depth distribution's log-spaced bins over ``depth_range`` metres.
        gaussian_stride: one latent Gaussian per ``gaussian_stride`` voxels along each axis.
        samples / ray_range: ray samples per pixel, log-spaced over ``ray_range`` metres.
        max_depth: ground truth beyond it is not supervised (and outputs are clamped to it).
        baseline: also train :class:`MonoDepth` (``baseline_head_layers`` 3x3 layers in its head).
    """

    def __init__(self, grid: VoxelGrid | dict, cameras: Sequence[str], sizes: dict, widths: Sequence[int] = (32, 48, 64),
                 dim: int = 48, volume_dim: int = 16, bins: int = 32, depth_range: Sequence[float] = (0.5, 80.0),
                 gaussian_stride: Sequence[int] = (2, 2, 2), gaussian_dim: int = 8, samples: int = 48,
                 ray_range: Sequence[float] = (0.3, 60.0), max_depth: float = 80.0, render_weight: float = 0.5,
                 bin_weight: float = 0.2, baseline: bool = True, baseline_head_layers: int = 3, stride: int = 4,
                 seed: int = 0) -> None:
        self.grid = as_voxel_grid(grid)
        super().__init__(data_preprocessor=PFDepthPreprocessor(cameras, sizes, self.grid, stride))
        self.cameras, self.max_depth = tuple(cameras), float(max_depth)
        self.render_weight, self.bin_weight = float(render_weight), float(bin_weight)
        self.bins, self.log_lo, self.log_hi = int(bins), math.log(depth_range[0]), math.log(depth_range[1])
        C = volume_dim
        self.encoder = ViewEncoder(widths, dim)
        self.bin_head = nn.Conv2d(dim, bins, 1)
        self.to_volume = nn.Conv2d(dim, C, 1)
        # heterogeneous spatial fusion: weighted mean + (views seeing the voxel, their total weight)
        self.fuse = nn.Sequential(nn.Conv3d(C + 2, C, 3, 1, 1), nn.GroupNorm(4, C), nn.ReLU(inplace=True), Res3d(C))
        # latent Gaussians on a coarse lattice of anchors
        gen = torch.Generator().manual_seed(seed)
        X, Y, Z = self.grid.shape
        sx, sy, sz = (int(s) for s in gaussian_stride)
        vs = self.grid.voxel_size
        ax = [o + (np.arange(0, n, s) + s / 2) * v for o, n, s, v in zip(self.grid.origin, (X, Y, Z), (sx, sy, sz), vs)]
        anchors = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
        self.register_buffer("anchors", torch.from_numpy(anchors), persistent=False)
        G = anchors.shape[0]
        self.latent = nn.Parameter(torch.randn(G, gaussian_dim, generator=gen) * 0.1)
        self.cell = torch.tensor([sx * vs[0], sy * vs[1], sz * vs[2]], dtype=torch.float32)
        self.gauss_mlp = nn.Sequential(nn.Linear(C + gaussian_dim, 32), nn.ReLU(inplace=True), nn.Linear(32, 3 + 3 + 4 + 1 + C))
        with torch.no_grad():  # Gaussians start on their anchors, isotropic; their features small, not zero
            self.gauss_mlp[-1].weight[:11].zero_()
            self.gauss_mlp[-1].weight[11:].normal_(0.0, 0.01, generator=gen)
            self.gauss_mlp[-1].bias.zero_()
        # rendering: density + features from the volume; far range per pixel; per-view refinement
        self.decode = nn.Conv3d(C, 1 + 8, 1)
        nn.init.constant_(self.decode.bias[:1], -2.0)
        self.far_head = nn.Conv2d(dim, 1, 1)
        nn.init.constant_(self.far_head.bias, math.log(40.0))
        self.refine = nn.Sequential(nn.Conv2d(dim + 2 + 8, dim, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, 1, 3, 1, 1))
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)
        self.up = UpRefine(widths[0])
        t = torch.exp(torch.linspace(math.log(ray_range[0]), math.log(ray_range[1]), samples))
        self.register_buffer("t_samples", t, persistent=False)
        self.mono = MonoDepth(widths, dim, baseline_head_layers) if baseline else None

    # --- the volume ----------------------------------------------------------------------------------
    def lift(self, x: DepthInputs, feats: list[torch.Tensor], probs: list[torch.Tensor]) -> torch.Tensor:
        """Distortion-aware lifting + heterogeneous spatial fusion → ``[B, C, X, Y, Z]``."""
        X, Y, Z = self.grid.shape
        num, wsum, seen = 0.0, 0.0, 0.0
        for v, f, p in zip(x.views, feats, probs):
            g = v.lift_grid[:, :, None]                                              # [B, N, 1, 2]
            fv = F.grid_sample(self.to_volume(f), g, align_corners=False)[..., 0]      # [B, C, N]
            logr = (v.lift_range.clamp(min=1e-3).log() - self.log_lo) / (self.log_hi - self.log_lo) * 2 - 1
            g3 = torch.cat([v.lift_grid, logr[..., None]], -1)[:, :, None, None]        # [B, N, 1, 1, 3]
            w = F.grid_sample(p[:, None], g3, align_corners=False, padding_mode="border")[:, 0, :, 0, 0] * self.bins
            ok = (v.lift_valid & v.has_image[:, None]).float()                         # [B, N]
            w = w * ok
            num = num + fv * w[:, None]
            wsum = wsum + w
            seen = seen + ok
        fused = num / (wsum[:, None] + 1e-3)
        vol = torch.cat([fused, wsum[:, None].clamp(max=10.0) / 10.0, seen[:, None] / len(x.views)], 1)
        return self.fuse(vol.view(vol.shape[0], -1, X, Y, Z))

    def gaussians(self, vol: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Latent Gaussians adapted to the fused features at their anchors, splatted into the volume."""
        B, C = vol.shape[:2]
        anchors = self.anchors[None].expand(B, -1, -1)
        local = sample_volume(vol, anchors, self.grid).transpose(1, 2)               # [B, G, C]
        out = self.gauss_mlp(torch.cat([local, self.latent[None].expand(B, -1, -1)], -1))
        cell = self.cell.to(vol)
        means = anchors + torch.tanh(out[..., :3]) * cell
        scales = (0.5 * cell) * torch.exp(out[..., 3:6].clamp(-3, 2))
        quat = out[..., 6:10] + vol.new_tensor([1.0, 0, 0, 0])
        opacity = torch.sigmoid(out[..., 10] + 2.0)
        feats = out[..., 11:]
        splat = torch.stack([gaussian_splat_volume(means[b], scales[b], quat[b], opacity[b], feats[b], self.grid)
                             for b in range(B)])
        return vol + splat, {"means": means, "scales": scales, "opacity": opacity}

    def render(self, dens: torch.Tensor, v: ViewBatch, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Volume rendering along ``v``'s rays → (range ``[B, 1, h, w]``, accumulated opacity, features ``[B, 8, h, w]``)."""
        B, h, w = v.ray_valid.shape
        t = self.t_samples
        S = t.numel()
        pts = v.origin[:, None, None, None] + v.rays_ego[:, :, :, None] * t[:, None]   # [B, h, w, S, 3]
        s = sample_volume(dens, pts.reshape(B, -1, 3), self.grid).view(B, -1, h, w, S)  # [B, 9, h, w, S]
        sigma = F.softplus(s[:, 0])
        delta = torch.cat([t[1:] - t[:-1], t[-1:] - t[-2:-1]])
        alpha = 1 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-7], -1), -1)
        weights = alpha * trans[..., :-1]                                               # [B, h, w, S]
        far = torch.exp(self.far_head(feat)[:, 0]).clamp(min=float(t[-1]))
        rng = (weights * t).sum(-1) + trans[..., -1] * far
        feats = (weights[:, None] * s[:, 1:]).sum(-1)
        return rng[:, None], (1 - trans[..., -1])[:, None], feats

    # --- forward --------------------------------------------------------------------------------------
    def run(self, x: DepthInputs) -> tuple[list[ViewResult], dict]:
        feats, stems, logits, probs = [], [], [], []
        for v in x.views:
            f, stem = self.encoder(v.image, v.rays_cam, v.kind)
            f = f * v.has_image[:, None, None, None]
            lg = self.bin_head(f)
            feats.append(f), stems.append(stem), logits.append(lg), probs.append(lg.softmax(1))
        vol = self.lift(x, feats, probs)
        vol, gauss = self.gaussians(vol)
        dens = self.decode(vol)
        results = []
        for v, f, stem, lg in zip(x.views, feats, stems, logits):
            rng, acc, rf = self.render(dens, v, f)
            log_r = rng.clamp(min=1e-3).log()
            delta = self.refine(torch.cat([f, log_r, acc, rf], 1))
            out = self.up(log_r + delta, stem, v.image.shape[-2:])
            log_render = F.interpolate(log_r, size=v.image.shape[-2:], mode="bilinear", align_corners=False)
            results.append(ViewResult(out, log_render, lg))
        return results, gauss

    def forward(self, inputs: DepthInputs, data_samples: list[Targets | None] | None = None, mode: str = "tensor"):
        results, gauss = self.run(inputs)
        mono = [self.mono(v) for v in inputs.views] if self.mono is not None else None
        if mode == "tensor":
            return results
        if mode == "loss":
            if data_samples is None or any(t is None for t in data_samples):
                raise ValueError("PFDepth.loss: every sample needs targets (Targets.depth per camera)")
            return self.loss(inputs, results, mono, data_samples)
        if mode == "predict":
            return self.outputs(inputs, results, mono)
        raise ValueError(f"PFDepth: mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    # --- loss -----------------------------------------------------------------------------------------
    def target_range(self, v: ViewBatch, targets: list[Targets]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth range ``[B, H, W]`` (pinhole z converted along the ray) and its mask (valid, in FOV, capped)."""
        import cv2

        H, W = v.image.shape[-2:]
        gts = []
        for t in targets:
            dm = t.depth.get(v.name)
            if dm is None:
                gts.append(np.zeros((H, W), np.float32))
                continue
            d = dm.depth
            if d.shape != (H, W):
                d = cv2.resize(d, (W, H), interpolation=cv2.INTER_NEAREST)
            gts.append(d)
        gt = torch.from_numpy(np.stack(gts)).to(v.ray_z)
        if v.kind == PINHOLE:
            gt = gt / v.ray_z.clamp(min=1e-3)
        mask = (gt > 0) & (gt <= self.max_depth) & v.fov & torch.isfinite(gt)
        return gt, mask

    def loss(self, x: DepthInputs, results: list[ViewResult], mono: list[ViewResult] | None,
             targets: list[Targets]) -> dict[str, torch.Tensor]:
        terms: dict[str, list] = {"loss_depth": [], "loss_render": [], "loss_bins": [], "loss_mono": []}
        for i, (v, r) in enumerate(zip(x.views, results)):
            gt, mask = self.target_range(v, targets)
            if not mask.any():
                continue
            lg = gt.clamp(min=1e-3).log()
            terms["loss_depth"].append((r.log_range[:, 0] - lg).abs()[mask].mean())
            terms["loss_render"].append(self.render_weight * (r.log_render[:, 0] - lg).abs()[mask].mean())
            # depth-distribution target at the feature pixels' centres
            s = v.image.shape[-1] // r.bin_logits.shape[-1]
            g4, m4 = lg[:, s // 2::s, s // 2::s], mask[:, s // 2::s, s // 2::s]
            if m4.any():
                b = ((g4 - self.log_lo) / (self.log_hi - self.log_lo) * self.bins).floor().clamp(0, self.bins - 1).long()
                ce = F.cross_entropy(r.bin_logits, b, reduction="none")
                terms["loss_bins"].append(self.bin_weight * ce[m4].mean())
            if mono is not None:
                terms["loss_mono"].append((mono[i].log_range[:, 0] - lg).abs()[mask].mean())
        if not terms["loss_depth"]:
            raise ValueError("PFDepth.loss: no view of the batch has valid ground-truth depth")
        return {k: torch.stack(v).mean() for k, v in terms.items() if v}

    # --- outputs --------------------------------------------------------------------------------------
    def _maps(self, x: DepthInputs, results: list[ViewResult], b: int) -> dict[str, DepthMap]:
        maps = {}
        for v, r in zip(x.views, results):
            rng = r.log_range[b, 0].exp().clamp(max=self.max_depth)
            d = rng * v.ray_z[b] if v.kind == PINHOLE else rng
            d = torch.where(v.fov[b], d, torch.zeros_like(d))
            maps[v.name] = DepthMap(d.float().cpu().numpy(), v.name, x.timestamps[b], "z" if v.kind == PINHOLE else "range")
        return maps

    @torch.no_grad()
    def outputs(self, x: DepthInputs, results: list[ViewResult], mono: list[ViewResult] | None) -> list[DepthOutput]:
        out = []
        for b, token in enumerate(x.tokens):
            rendered_only = tuple(v.name for v in x.views if not bool(v.has_image[b]))
            out.append(DepthOutput(self._maps(x, results, b), rendered_only,
                                   self._maps(x, mono, b) if mono is not None else None,
                                   {v.name: v.kind for v in x.views}))
        return out

    @torch.no_grad()
    def predict_depth(self, frames: Sequence[Frame], cameras: Sequence[str] | None = None) -> list[DepthOutput]:
        """Inference on raw frames (the pipeline's entry): one :class:`DepthOutput` per frame.

        ``cameras``: the views to use and render (any rig: the weights are shared by every view of a
        type); None: the configured ones.
        """
        self.eval()
        pre = self.data_preprocessor
        cams = pre.cameras if cameras is None else tuple(cameras)
        x = build_inputs(frames, cams, pre.sizes, pre.grid, pre.stride, pre.cache).to(self.latent.device)
        return self.forward(x, mode="predict")
