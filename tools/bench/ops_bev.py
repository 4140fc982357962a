"""Benchmark: BEV ops (perception.ops.bev_pool, perception.ops.gaussian_splat) against their torch references.

Rows (each at 1 and 2 threads, ``torch.set_num_threads`` and ``numba.set_num_threads``; ours and the
peer side by side in one process, median of ``repeats`` runs after a warm-up; the torch peers take
seconds a run at these sizes, so they get at most ``PEER_REPEATS`` runs):

- ``bev_pool`` at BEVFusion's camera shape (B=1, N=6 cameras, D=118 bins over 1-60 m, H=32, W=88,
  C=80 per-pixel features, depth a softmax over D; 360 x 360 grid at 0.3 m over +-54 m, z in
  [-10, 10) m), plan prepared once: numba kernel vs the torch ``index_add_`` formulation driven by the
  same plan. The frustum comes from six pinhole cameras around the ego (nuScenes-like intrinsics,
  704 x 256 images, stride 8). ``bev_pool_prepare`` has its own row (numba counting sort vs torch
  ``argsort`` + ``unique_consecutive``).
- ``gaussian_splat_bev`` forward and backward: 20k Gaussians, C=64, 200 x 200 grid (0.5 m over
  +-50 m), means uniform over the grid, scales uniform in [0.5, 3] m per axis, angles uniform,
  opacities uniform in [0, 1]; vs ``gaussian_splat_bev_reference`` (its autograd for the backward).
  The backward rows time the backward alone (graph built beforehand, ``retain_graph``).
  A data row puts the 20k means on points of KITTI sweep 000001 (clustered like a real scene).
- ``gaussian_splat_volume`` forward and backward: 5k Gaussians, C=32, 100 x 100 x 8 voxels (1 m over
  +-50 m x [-3, 5) m), scales uniform in [0.3, 1.5] m, random unit quaternions.

    python -c "from tools.bench.ops_bev import rows; print(rows(repeats=10))"
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import median_ms, op_row

VELODYNE = Path(__file__).resolve().parents[2].parent / "shared/data/kitti/training/velodyne"
PEER_REPEATS = 3






def bevfusion_frustum(B=1, N=6, D=118, H=32, W=88) -> torch.Tensor:
    """``[B, N, D, H, W, 3]`` ego-frame xyz of six pinhole cameras' frustums (depth 1 + 0.5 k m)."""
    depths = 1.0 + 0.5 * torch.arange(D, dtype=torch.float64)
    stride = 8
    f = 1266.0 * 704 / 1600 / stride                       # nuScenes focal length, resized to 704 px, stride 8
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                          indexing="ij")
    ray = torch.stack([(u - W / 2) / f, (v - H / 2) / f, torch.ones_like(u)], -1)      # camera frame (x right, y down)
    cam_to_ego = torch.tensor([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=torch.float64)
    cams = []
    for k in range(N):
        yaw = 2 * math.pi * k / N
        c, s = math.cos(yaw), math.sin(yaw)
        R = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64) @ cam_to_ego
        t = torch.tensor([1.0 * c, 1.0 * s, 1.6], dtype=torch.float64)
        cams.append(depths[:, None, None, None] * ray[None] @ R.T + t)
    return torch.stack(cams)[None].expand(B, N, D, H, W, 3).float().contiguous()


def _bev_pool_rows(repeats: int, threads: int) -> list[dict]:
    from perception.geometry.grid import BevGrid
    from perception.ops.bev_pool import bev_pool, bev_pool_prepare

    g = torch.Generator().manual_seed(0)
    geom = bevfusion_frustum()
    B, N, D, H, W, _ = geom.shape
    C = 80
    grid, z_range = BevGrid(-54.0, -54.0, 54.0, 54.0, 0.3), (-10.0, 10.0)
    feats = torch.randn(B, N, H, W, C, generator=g)
    depth = torch.randn(B, N, D, H, W, generator=g).softmax(dim=2)
    plan = bev_pool_prepare(geom, grid, z_range)
    params = {"B": B, "N": N, "D": D, "H": H, "W": W, "C": C, "grid": "360x360 @ 0.3 m", "z": list(z_range),
              "kept_points": plan.n_kept, "dropped": plan.n_dropped, "cells_hit": int(plan.cell_ids.numel()),
              "feats": "per pixel [B, N, H, W, C]"}
    ours = bev_pool(feats, depth, plan)
    peer = bev_pool(feats, depth, plan, backend="torch")
    err = float((ours - peer).abs().max())
    ours_ms = median_ms(lambda: bev_pool(feats, depth, plan), repeats)
    peer_ms = median_ms(lambda: bev_pool(feats, depth, plan, backend="torch"), min(repeats, PEER_REPEATS))
    rows = [op_row("bev_pool", "numba, plan prepared", "torch index_add_ with the same plan", params, ours_ms, peer_ms,
                 threads, max_abs_diff=err)]
    prep_ms = median_ms(lambda: bev_pool_prepare(geom, grid, z_range, backend="cpu"), repeats)
    prep_peer = median_ms(lambda: bev_pool_prepare(geom, grid, z_range, backend="torch"), min(repeats, PEER_REPEATS))
    rows.append(op_row("bev_pool_prepare", "numba assignment + counting sort", "torch argsort + unique_consecutive",
                     params, prep_ms, prep_peer, threads))
    return rows


def _gaussians2d(G, C, means=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    if means is None:
        means = (torch.rand(G, 2, generator=g) * 2 - 1) * 50
    scales = 0.5 + torch.rand(G, 2, generator=g) * 2.5
    rot = (torch.rand(G, generator=g) * 2 - 1) * math.pi
    return [means, scales, rot, torch.rand(G, generator=g), torch.randn(G, C, generator=g)]


def _splat_rows(name, fn, ref, args, grid, params, repeats, threads) -> list[dict]:
    out = fn(*args, grid)
    err = float((out - ref(*args, grid)).abs().max())
    fwd = median_ms(lambda: fn(*args, grid), repeats)
    fwd_peer = median_ms(lambda: ref(*args, grid), min(repeats, PEER_REPEATS))
    rows = [op_row(name, "numba forward", "torch reference forward", params, fwd, fwd_peer, threads,
                 max_abs_diff=err)]
    go = torch.randn_like(out)
    timings = []
    for f, n in ((fn, repeats), (ref, min(repeats, PEER_REPEATS))):
        p = [a.clone().requires_grad_() for a in args]
        y = f(*p, grid)
        timings.append(median_ms(lambda: torch.autograd.grad(y, p, go, retain_graph=True), n))
    rows.append(op_row(name + "_backward", "numba backward (per Gaussian)", "torch reference autograd", params,
                     timings[0], timings[1], threads))
    return rows


def rows(repeats: int = 20, threads=(1, 2)) -> list[dict]:
    import numba

    from perception.geometry.grid import BevGrid, VoxelGrid
    from perception.ops.gaussian_splat import (gaussian_splat_bev, gaussian_splat_bev_reference,
                                               gaussian_splat_volume, gaussian_splat_volume_reference)

    kitti = VELODYNE / "000001.bin"
    kitti_means = None
    if kitti.exists():
        pts = torch.from_numpy(np.fromfile(kitti, dtype=np.float32).reshape(-1, 4))[:, :2]
        pts = pts[(pts.abs() < 50).all(1)]
        pick = torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))[:20000]
        kitti_means = pts[pick].contiguous()
    else:
        print(f"ops_bev: KITTI sweep {kitti} not present; no data row", file=sys.stderr)

    out = []
    for n in threads:
        torch.set_num_threads(n)
        numba.set_num_threads(n)
        out += _bev_pool_rows(repeats, n)
        grid = BevGrid(-50.0, -50.0, 50.0, 50.0, 0.5)
        params = {"G": 20000, "C": 64, "grid": "200x200 @ 0.5 m", "scales_m": [0.5, 3.0], "means": "uniform"}
        out += _splat_rows("gaussian_splat_bev", gaussian_splat_bev, gaussian_splat_bev_reference,
                           _gaussians2d(20000, 64), grid, params, repeats, n)
        if kitti_means is not None:
            params = dict(params, means=f"KITTI 000001: {len(kitti_means)} points (|x|, |y| < 50 m)")
            out += _splat_rows("gaussian_splat_bev", gaussian_splat_bev, gaussian_splat_bev_reference,
                               _gaussians2d(len(kitti_means), 64, means=kitti_means), grid, params, repeats, n)
        vgrid = VoxelGrid(-50.0, -50.0, -3.0, 50.0, 50.0, 5.0, 1.0)
        g = torch.Generator().manual_seed(1)
        G = 5000
        vmeans = torch.rand(G, 3, generator=g) * torch.tensor([100.0, 100.0, 8.0]) - torch.tensor([50.0, 50.0, 3.0])
        quat = torch.randn(G, 4, generator=g)
        vargs = [vmeans, 0.3 + torch.rand(G, 3, generator=g) * 1.2, quat / quat.norm(dim=1, keepdim=True),
                 torch.rand(G, generator=g), torch.randn(G, 32, generator=g)]
        params = {"G": G, "C": 32, "grid": "100x100x8 @ 1 m", "scales_m": [0.3, 1.5]}
        out += _splat_rows("gaussian_splat_volume", gaussian_splat_volume, gaussian_splat_volume_reference, vargs,
                           vgrid, params, repeats, n)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(rows(repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=1))
