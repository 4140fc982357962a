"""Benchmark: voxelization ops (perception.ops.voxelize, perception.ops.scatter) against their peers.

Rows (each at 1 and 2 threads, ``torch.set_num_threads`` and ``numba.set_num_threads``; ours and the
peer side by side in one process, median of ``repeats`` runs after a warm-up):

- ``voxelize`` (hard, numba) vs spconv's ``spconv.pytorch.utils.PointToVoxel`` (CPU, single-threaded
  C++ with a dense grid allocated once at construction) and vs mmcv's ``Voxelization`` hard mode
  (CPU, ~0.4 s a sweep, so at most 3 repeats); each row records whether the voxel sets are identical
  (coords, num_points and the voxels themselves);
- ``dynamic_voxelize`` (numba) vs mmcv's ``Voxelization(max_num_points=-1)`` (dynamic mode);
- ``dynamic_scatter`` mean, C = 64 random features, coords from our dynamic voxelization, vs the best
  plain-torch formulation of the same result (linear int64 keys + ``torch.unique(return_inverse)`` +
  one of ``index_add_``/bincount, ``scatter_reduce(mean)``, ``index_reduce_(mean)``: all three are
  timed, the fastest is the peer). mmcv's ``DynamicScatter`` has no CPU kernel.

Data: KITTI sweep 000001 (120,268 points) and a "Waymo-sized" frame made by concatenating sweeps
000001 and 000002 as they are (two different scenes overlaid, 247,159 points). Grid: 0.1 x 0.1 x 0.15
m over (-75.2, -75.2, -5, 75.2, 75.2, 3.1) (1504 x 1504 x 54 cells, covering both sweeps), 5 points per
voxel, max_voxels = the point count (keeps every voxel). Rows are skipped with a printed reason when
the sweeps or a peer are absent.

    python -c "from tools.bench.ops_voxel import rows; print(rows(repeats=10))"
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import median_ms, op_row

VELODYNE = Path(__file__).resolve().parents[2].parent / "shared/data/kitti/training/velodyne"
VOXEL_SIZE = [0.1, 0.1, 0.15]
PCR = [-75.2, -75.2, -5.0, 75.2, 75.2, 3.1]
P = 5
C_FEAT = 64






def _frames() -> list[tuple[str, torch.Tensor]]:
    paths = [VELODYNE / "000001.bin", VELODYNE / "000002.bin"]
    if not paths[0].exists():
        print(f"ops_voxel: KITTI sweep {paths[0]} not present; no data rows", file=sys.stderr)
        return []
    s1 = torch.from_numpy(np.fromfile(paths[0], dtype=np.float32).reshape(-1, 4))
    frames = [("kitti 000001", s1)]
    if paths[1].exists():
        s2 = torch.from_numpy(np.fromfile(paths[1], dtype=np.float32).reshape(-1, 4))
        frames.append(("kitti 000001+000002 stacked (Waymo-sized)", torch.cat([s1, s2])))
    else:
        print(f"ops_voxel: {paths[1]} not present; no stacked-frame rows", file=sys.stderr)
    return frames


def _torch_scatter_mean(feats: torch.Tensor, coors: torch.Tensor, how: str):
    """Plain-torch dynamic scatter mean: the same outputs as ours (voxel feats, coords, point2voxel)."""
    valid = (coors >= 0).all(1)
    idx = valid.nonzero()[:, 0]
    c = coors[idx].long()
    mx = c.amax(0)
    Y, X = int(mx[1]) + 1, int(mx[2]) + 1
    key = (c[:, 0] * Y + c[:, 1]) * X + c[:, 2]
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    M = uniq.numel()
    f = feats[idx]
    if how == "index_add":
        out = f.new_zeros(M, f.shape[1]).index_add_(0, inv, f)
        out /= torch.bincount(inv, minlength=M).to(f.dtype)[:, None]
    elif how == "scatter_reduce":
        out = f.new_zeros(M, f.shape[1]).scatter_reduce_(0, inv[:, None].expand_as(f), f, "mean", include_self=False)
    else:
        with warnings.catch_warnings():  # "index_reduce() is in beta"
            warnings.simplefilter("ignore", UserWarning)
            out = f.new_zeros(M, f.shape[1]).index_reduce_(0, inv, f, "mean", include_self=False)
    vco = torch.stack([uniq // (Y * X), (uniq // X) % Y, uniq % X], 1).int()
    p2v = torch.full((len(coors),), -1, dtype=torch.long)
    p2v[idx] = inv
    return out, vco, p2v


def _same_voxels(ours, v, c, n) -> bool:
    return bool(torch.equal(ours.coords, c) and torch.equal(ours.num_points, n) and torch.equal(ours.voxels, v))


def rows(repeats: int = 20, threads=(1, 2)) -> list[dict]:
    import numba

    from perception.ops.scatter import dynamic_scatter
    from perception.ops.voxelize import dynamic_voxelize, voxelize

    try:
        from spconv.pytorch.utils import PointToVoxel
    except ImportError as e:
        PointToVoxel = None
        print(f"ops_voxel: spconv not importable ({e}); no spconv rows", file=sys.stderr)
    try:
        from mmcv.ops import Voxelization
    except ImportError as e:
        Voxelization = None
        print(f"ops_voxel: mmcv.ops not importable ({e}); no mmcv rows", file=sys.stderr)

    out: list[dict] = []
    before = (torch.get_num_threads(), numba.get_num_threads())
    try:
        for name, pts in _frames():
            n = len(pts)
            base = {"data": name, "points": n, "voxel_size": VOXEL_SIZE, "point_cloud_range": PCR}
            coors = dynamic_voxelize(pts, VOXEL_SIZE, PCR)
            feats = torch.randn(n, C_FEAT, generator=torch.Generator().manual_seed(0))
            for t in threads:
                torch.set_num_threads(t)
                numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
                ours = voxelize(pts, VOXEL_SIZE, PCR, P, n)
                hard = dict(base, max_points_per_voxel=P, max_voxels=n, voxels=len(ours))
                ours_ms = median_ms(lambda: voxelize(pts, VOXEL_SIZE, PCR, P, n), repeats)
                if PointToVoxel is not None:
                    gen = PointToVoxel(VOXEL_SIZE, PCR, pts.shape[1], n, P)
                    same = _same_voxels(ours, *gen(pts))
                    peer_ms = median_ms(lambda: gen(pts), repeats)
                    out.append(op_row("voxelize", "perception voxelize (numba, hash)", "spconv PointToVoxel (CPU)",
                                    hard, ours_ms, peer_ms, t, same_voxel_set=same))
                if Voxelization is not None:
                    vox = Voxelization(VOXEL_SIZE, PCR, P, n)
                    same = _same_voxels(ours, *vox(pts))
                    peer_ms = median_ms(lambda: vox(pts), min(repeats, 3), warmup=0)
                    out.append(op_row("voxelize", "perception voxelize (numba, hash)", "mmcv Voxelization (hard, CPU)",
                                    hard, ours_ms, peer_ms, t, same_voxel_set=same))
                    dyn = Voxelization(VOXEL_SIZE, PCR, -1, -1)
                    same = bool(torch.equal(coors, dyn(pts)))
                    out.append(op_row("dynamic_voxelize", "perception dynamic_voxelize (numba)",
                                    "mmcv Voxelization (dynamic, CPU)", base,
                                    median_ms(lambda: dynamic_voxelize(pts, VOXEL_SIZE, PCR), repeats),
                                    median_ms(lambda: dyn(pts), repeats), t, same_result=same))
                ref = _torch_scatter_mean(feats, coors, "index_add")
                res = dynamic_scatter(feats, coors, "mean")
                same = bool(torch.equal(res[1], ref[1]) and torch.equal(res[2], ref[2])
                            and torch.allclose(res[0], ref[0], rtol=1e-5, atol=1e-6))
                ours_ms = median_ms(lambda: dynamic_scatter(feats, coors, "mean"), repeats)
                peers = {how: median_ms(lambda: _torch_scatter_mean(feats, coors, how), repeats)
                         for how in ("index_add", "scatter_reduce", "index_reduce")}
                best = min(peers, key=peers.get)
                out.append(op_row("dynamic_scatter", "perception dynamic_scatter mean (numba, radix sort)",
                                f"torch unique + {best}", dict(base, reduce="mean", channels=C_FEAT,
                                                               voxels=int(res[0].shape[0])),
                                ours_ms, peers[best], t, same_result=same,
                                torch_formulations_ms={k: round(v, 3) for k, v in peers.items()}))
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(rows(repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=1))
