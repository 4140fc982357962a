"""Benchmark: MSF's voxel-sampler pooling (perception.ops.proposal_pool) against brute force.

Ours: ``proposal_point_pool(backend="cpu")`` (numba voxel hash). Peer: the brute-force torch
reference (every point against every proposal, chunked; ``proposal_point_pool_reference``), on
the same inputs in the same process; each row also records whether both selected the same points.

Data: K = 128 car-sized proposals on real points of KITTI sweep 000001, propagated to T = 4 frames
along random velocities (0.1 s apart), over
  - the 4 sweeps 000001-000004 as the 4 frames (~480k points), and
  - 4 frames of 3 stacked sweeps each (offset by a few cm), ~1.44M points;
a synthetic 1M-point scene stands in (with a printed reason) when the KITTI sweeps are absent.
Rows at 1 and 2 threads (``torch.set_num_threads`` and ``numba.set_num_threads``), plus a CUDA
row when a GPU is present.

    python -c "from tools.bench.ops_proposal import rows; print(rows(repeats=5))"
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import median_ms

VELODYNE = Path(__file__).resolve().parents[2].parent / "shared/data/kitti/training/velodyne"
SWEEPS = [VELODYNE / f"{i:06d}.bin" for i in range(1, 5)]
K, P, DT = 128, 128, 0.1




def _proposals(anchor: torch.Tensor, T: int, seed: int = 0) -> torch.Tensor:
    """``[T, K, 7]`` car boxes centred on real points of ``anchor`` (within 40 m), moved back in
    time along random velocities (as MSF propagates current-frame proposals to past frames)."""
    g = torch.Generator().manual_seed(seed)
    near = anchor[anchor[:, :2].norm(dim=1) < 40.0]
    c = near[torch.randint(len(near), (K,), generator=g), :3]
    box = torch.cat([c[:, :2], c[:, 2:3] - 0.8, torch.tensor([3.9, 1.6, 1.56]).expand(K, 3),
                     torch.rand(K, 1, generator=g) * 2 * np.pi], dim=1)
    vel = torch.randn(K, 2, generator=g) * 5.0
    frames = []
    for t in range(T):
        b = box.clone()
        b[:, :2] -= vel * DT * t
        frames.append(b)
    return torch.stack(frames)


def _datasets() -> list[tuple[str, list[torch.Tensor], torch.Tensor]]:
    missing = [p for p in SWEEPS if not p.exists()]
    if missing:
        print(f"ops_proposal: KITTI sweeps absent ({missing[0]}): data rows skipped, synthetic row instead",
              file=sys.stderr)
        g = torch.Generator().manual_seed(1)
        frames = []
        for _ in range(4):
            p = torch.rand(250_000, 4, generator=g)
            p[:, :2] = p[:, :2] * 160 - 80
            p[:, 2] = p[:, 2] * 4 - 2
            frames.append(p)
        return [("synthetic 4 x 250k uniform in 160 m x 160 m x 4 m", frames, _proposals(frames[0], 4))]
    sweeps = [torch.from_numpy(np.fromfile(p, np.float32).reshape(-1, 4)) for p in SWEEPS]
    props = _proposals(sweeps[0], 4)
    stacked = []
    for t in range(4):
        parts = []
        for j in range(3):
            s = sweeps[(t + j) % 4].clone()
            s[:, :2] += 0.02 * j
            parts.append(s)
        stacked.append(torch.cat(parts))
    return [("kitti 000001-000004, 1 sweep per frame", sweeps, props),
            ("kitti 000001-000004, 3 stacked sweeps per frame", stacked, props)]


def rows(repeats: int = 20, threads=(1, 2)) -> list[dict]:
    import numba

    from perception.ops.proposal_pool import proposal_point_pool, proposal_point_pool_reference

    out = []
    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    try:
        for name, frames, props in _datasets():
            n = sum(len(f) for f in frames)
            params = {"data": name, "points": n, "frames": len(frames), "proposals": K, "max_points": P,
                      "sampling": "first P in point order", "dtype": "float32", "voxel_size": "auto (r, r, h)"}
            for nt in threads:
                torch.set_num_threads(nt)
                numba.set_num_threads(min(nt, numba.config.NUMBA_NUM_THREADS))
                ours = proposal_point_pool(frames, props, max_points=P, backend="cpu")
                peer = proposal_point_pool_reference(frames, props, max_points=P)
                match = bool(torch.equal(ours.indices, peer.indices) and torch.equal(ours.counts, peer.counts))
                ms = median_ms(lambda: proposal_point_pool(frames, props, max_points=P, backend="cpu"), repeats)
                peer_ms = median_ms(lambda: proposal_point_pool_reference(frames, props, max_points=P), repeats,
                                     warmup=0)
                out.append({"op": "proposal_point_pool", "impl": "perception numba voxel hash (cpu)",
                            "peer": "brute-force torch reference (chunked)", "params": params,
                            "median_ms": round(ms, 3), "peer_median_ms": round(peer_ms, 3),
                            "speedup": round(peer_ms / ms, 3), "threads": nt, "match": match,
                            "mean_inside": round(float(ours.counts.float().mean()), 1)})
            if torch.cuda.is_available():
                out.append(_cuda_row(frames, props, params, repeats, proposal_point_pool))
    finally:
        torch.set_num_threads(old_torch)
        numba.set_num_threads(old_numba)
    return out


def _cuda_row(frames, props, params, repeats, proposal_point_pool) -> dict:
    fc, pc = [f.cuda() for f in frames], props.cuda()
    sync = torch.cuda.synchronize
    ours = proposal_point_pool(fc, pc, max_points=P, backend="cuda")
    peer = proposal_point_pool(fc, pc, max_points=P, backend="torch")
    match = bool(torch.equal(ours.indices, peer.indices) and torch.equal(ours.counts, peer.counts))
    ms = median_ms(lambda: proposal_point_pool(fc, pc, max_points=P, backend="cuda"), repeats, sync=sync)
    peer_ms = median_ms(lambda: proposal_point_pool(fc, pc, max_points=P, backend="torch"), repeats, sync=sync)
    return {"op": "proposal_point_pool", "impl": f"perception CUDA voxel hash ({torch.cuda.get_device_name()})",
            "peer": "brute-force torch reference (chunked), same GPU", "params": params,
            "median_ms": round(ms, 3), "peer_median_ms": round(peer_ms, 3), "speedup": round(peer_ms / ms, 3),
            "threads": None, "match": match}


if __name__ == "__main__":
    import json

    print(json.dumps(rows(repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=1))
