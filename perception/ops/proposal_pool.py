"""MSF's voxel-sampler pooling: the points-of-interest of every (frame, proposal) pair.

He, Li, Zhang, Li, Zhang, "MSF: Motion-guided Sequential Fusion for Efficient 3D Object Detection
from Point Cloud Sequences", CVPR 2023 (arXiv:2303.08316). MSF detects proposals on the current
frame, propagates them to each preceding frame along their estimated velocities, and pools the
points around every propagated proposal from that frame; its "voxel-based sampling" finds those
points through a voxel hash instead of testing every point against every proposal, so that
millions of points cost milliseconds. This module is that pooling step; the propagation is the
caller's (``proposals[t]`` are the boxes already moved to frame ``t``).

Region. Proposal ``(x, y, z, dx, dy, dz, yaw)`` (``z`` = bottom of the box) pools the points of its
frame inside the upright cylinder

    (px - x)^2 + (py - y)^2 <= R^2,   z - z_margin <= pz <= z + dz + z_margin,
    R = radius_scale * 0.5 * hypot(dx, dy)        (radius_scale = 1: the circle around the footprint)

with every boundary *inclusive*. The test runs in float64 (float32 points are widened exactly), with
the same operations in every backend, so all backends select the same points, ties included.
A proposal with a non-finite entry or a negative size pools nothing (``counts`` 0).

Sampling. ``counts[t, k]`` is how many points were inside. At most ``max_points`` (``P``) are kept:
with ``seed=None`` the first ``P`` in point order (lowest packed index; deterministic); with an
integer ``seed >= 0`` a seeded uniform subset of size ``P``: the inside points with the ``P``
smallest hash priorities ``mix32(mix32(mix32(seed) ^ (t*K + k)) ^ i)`` (31 bits, ties broken by
the index ``i``), a pure function of (seed, frame, proposal, point) that every backend evaluates
alike. Either way the kept indices are returned in increasing point order, then ``-1`` padding.

Outputs (:class:`PooledPoints`): ``points [T, K, P, C]`` the gathered rows of the input (zeros where
masked), or with ``canonical=True`` their xyz in the box frame (origin at the box's bottom centre,
x along the heading ``yaw``, z up: ``R(-yaw) (p - (x, y, z))``, other channels unchanged);
``mask [T, K, P]``; ``counts [T, K]``; ``indices [T, K, P]`` int64 into the packed points (``-1``
where masked); ``dropped_nonfinite``: how many input points had a non-finite x, y or z (they are
never selected).

Gradients. The selection is a gather: not differentiable with respect to where the points are, but
the gathered values carry gradient back to the input ``points`` (all channels, xyz included) when it
requires grad; the backward is a scatter-add through ``indices``
(``perception::proposal_point_gather_backward``). With ``canonical=True`` the box-frame transform is
plain torch on top of the gather, so gradient also reaches ``proposals`` through it.

Voxel hash (the ``"cpu"`` and ``"cuda"`` backends). Per frame, each finite point goes to the bucket
of its voxel ``floor(p / voxel_size)`` on a *toroidal* grid of ``bxy x bxy x bz`` buckets (voxel
coordinates taken modulo the grid, powers of two, about ``n_frame / 2`` buckets); a counting sort
groups the point indices by bucket (``starts``/``sorted_idx``, CSR). A proposal visits the buckets of
the voxels overlapping its cylinder's bounding box, at most one lap of the torus per axis, so
every bucket is visited at most once and wrapped-in far points are rejected by the exact test;
a heap of size ``P`` keeps the smallest keys. ``voxel_size=None`` takes ``(r, r, h)`` with ``r`` the
mean cylinder radius and ``h`` the mean cylinder height over the valid proposals.
``backend="torch"`` is :func:`proposal_point_pool_reference`'s brute force (all points against all
proposals, chunked).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np
import torch
from numba import prange

from perception.ops import _native
from perception.ops._backend import check_shape, resolve

__all__ = [
    "PooledPoints",
    "proposal_point_pool",
    "proposal_point_pool_reference",
    "proposal_cylinders",
]

_M32 = 0xFFFFFFFF
_HMUL = 0x45D9F3B  # < 2**31: every product of a 32-bit value with it fits in int64
_P31 = 0x7FFFFFFF
_VLIM = float(2**40)  # voxel coordinates are clamped to [-2^40, 2^40] (monotone: still exact)
_BZ = 4  # buckets along z
_NO_KEY = torch.iinfo(torch.int64).max
_REF_CHUNK = 1 << 22  # elements per (proposal chunk x frame points) block in the reference


@dataclass
class PooledPoints:
    """The output of :func:`proposal_point_pool` (see the module docstring)."""

    points: torch.Tensor  # [T, K, P, C] gathered points (box frame xyz if canonical), 0 where masked
    mask: torch.Tensor  # [T, K, P] bool
    counts: torch.Tensor  # [T, K] int64, points inside before sampling
    indices: torch.Tensor  # [T, K, P] int64 into the packed points, -1 where masked
    dropped_nonfinite: int  # input points with a non-finite x, y or z


# --------------------------------------------------------------------------------------------------
# geometry shared by every backend
# --------------------------------------------------------------------------------------------------

def proposal_cylinders(proposals: torch.Tensor, radius_scale: float = 1.0,
                       z_margin: float = 0.0) -> torch.Tensor:
    """``proposals [T, K, 7]`` → ``[T, K, 6]`` float64 ``(x, y, R^2, z_lo, z_hi, R_query)``.

    ``R_query`` is ``R`` padded by a relative 1e-12 (far above rounding) so that the bucket range
    is conservative. Invalid proposals (non-finite entry, negative size) get ``R^2 = -1`` and an empty z range.
    """
    b = proposals.detach().to(torch.float64)
    x, y, z, dx, dy, dz = (b[..., i] for i in range(6))
    r = radius_scale * 0.5 * torch.hypot(dx, dy)
    cyl = torch.stack([x, y, r * r, z - z_margin, z + dz + z_margin,
                       r + 1e-12 * (r + x.abs() + y.abs()) + 1e-12], dim=-1)
    valid = (torch.isfinite(b).all(-1) & (dx >= 0) & (dy >= 0) & (dz >= 0)
             & torch.isfinite(cyl).all(-1))
    invalid = torch.tensor([0.0, 0.0, -1.0, float("inf"), float("-inf"), 0.0], dtype=torch.float64,
                           device=b.device)
    return torch.where(valid[..., None], cyl, invalid)


def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * _HMUL) & _M32
    x ^= x >> 16
    x = (x * _HMUL) & _M32
    x ^= x >> 16
    return x


def _mix32_t(x: torch.Tensor) -> torch.Tensor:  # int64 tensor, same arithmetic as _mix32_int
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * _HMUL) & _M32
    x = x ^ (x >> 16)
    x = (x * _HMUL) & _M32
    return x ^ (x >> 16)


def _table_dims(offsets: np.ndarray) -> tuple[int, int]:
    """``(bxy, bz)``: a toroidal bucket grid of about ``max frame size / 2`` buckets."""
    n = int(np.max(offsets[1:] - offsets[:-1])) if len(offsets) > 1 else 0
    target = max(n, 1) / (2 * _BZ)
    bxy = 1
    while bxy * bxy < target:
        bxy *= 2
    return bxy, _BZ


def _auto_voxel(cyl: torch.Tensor) -> list[float]:
    valid = cyl[..., 2] >= 0
    if not bool(valid.any()):
        return [1.0, 1.0, 1.0]
    r = float(cyl[..., 2][valid].sqrt().mean())
    h = float((cyl[..., 4] - cyl[..., 3])[valid].mean())
    r = max(r, 0.05) if np.isfinite(r) else 1.0
    h = max(h, 0.05) if np.isfinite(h) else 1.0
    return [r, r, h]


# --------------------------------------------------------------------------------------------------
# torch reference: every point against every proposal (chunked), the test oracle
# --------------------------------------------------------------------------------------------------

def _select_reference(points: torch.Tensor, offsets: list[int], cyl: torch.Tensor, max_points: int,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    T, K = cyl.shape[0], cyl.shape[1]
    dev = points.device
    idx = torch.full((T, K, max_points), -1, dtype=torch.int64, device=dev)
    cnt = torch.zeros((T, K), dtype=torch.int64, device=dev)
    s0 = _mix32_int(seed) if seed >= 0 else 0
    for t in range(T):
        s, e = offsets[t], offsets[t + 1]
        n = e - s
        if n == 0 or K == 0:
            continue
        xyz = points[s:e, :3].to(torch.float64)  # [n, 3]
        px, py, pz = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        gidx = torch.arange(s, e, dtype=torch.int64, device=dev)  # [n]
        kc = max(1, _REF_CHUNK // n)
        p = min(max_points, n)
        for k0 in range(0, K, kc):
            c = cyl[t, k0:k0 + kc].to(dev)  # [kc, 6]
            dx = px[None, :] - c[:, 0:1]
            dy = py[None, :] - c[:, 1:2]
            d2 = dx * dx + dy * dy  # [kc, n]
            inside = (d2 <= c[:, 2:3]) & (pz[None, :] >= c[:, 3:4]) & (pz[None, :] <= c[:, 4:5])
            cnt[t, k0:k0 + kc] = inside.sum(1)
            if seed >= 0:
                q = t * K + torch.arange(k0, k0 + c.shape[0], dtype=torch.int64, device=dev)
                sq = _mix32_t(s0 ^ q)  # [kc]
                prio = _mix32_t(sq[:, None] ^ gidx[None, :]) & _P31
                key = torch.where(inside, (prio << 32) | gidx[None, :], _NO_KEY)
            else:
                key = torch.where(inside, gidx[None, :].expand_as(inside), _NO_KEY)
            top = torch.topk(key, p, dim=1, largest=False, sorted=True).values  # [kc, p]
            sel = (top & _M32) if seed >= 0 else top
            sel = torch.where(top == _NO_KEY, _NO_KEY, sel).sort(dim=1).values
            idx[t, k0:k0 + kc, :p] = torch.where(sel == _NO_KEY, -1, sel)
    return idx, cnt


# --------------------------------------------------------------------------------------------------
# numba CPU kernels: build the voxel hash, query it
# --------------------------------------------------------------------------------------------------

@numba.njit(cache=True, inline="always")
def _nb_mix32(x):
    x = x & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x45D9F3B) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x45D9F3B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


@numba.njit(cache=True, inline="always")
def _nb_vcoord(x, inv):
    v = np.floor(x * inv)
    if v < -1099511627776.0:
        v = -1099511627776.0
    elif v > 1099511627776.0:
        v = 1099511627776.0
    return np.int64(v)


@numba.njit(cache=True, inline="always")
def _nb_heap_offer(heap, hn, cap, key):
    """Keep the ``cap`` smallest keys in the max-heap ``heap[:hn]``; returns the new ``hn``."""
    if hn < cap:
        j = hn
        heap[j] = key
        hn += 1
        while j > 0:
            p = (j - 1) >> 1
            if heap[p] < heap[j]:
                tmp = heap[p]
                heap[p] = heap[j]
                heap[j] = tmp
                j = p
            else:
                break
    elif key < heap[0]:
        heap[0] = key
        j = 0
        while True:
            lft = 2 * j + 1
            if lft >= cap:
                break
            m = lft
            if lft + 1 < cap and heap[lft + 1] > heap[lft]:
                m = lft + 1
            if heap[m] > heap[j]:
                tmp = heap[m]
                heap[m] = heap[j]
                heap[j] = tmp
                j = m
            else:
                break
    return hn


@numba.njit(parallel=True, cache=True)
def _nb_build(pts, offsets, ivx, ivy, ivz, bxy, bz, starts, sorted_idx, sorted_xyz):
    """CSR over buckets: bucket ``g = t*(B+1) + b`` holds ``sorted_idx[starts[g]:starts[g+1]]``
    (and their xyz, ``sorted_xyz``, so that a query reads memory in order); returns how many
    points were non-finite."""
    n = pts.shape[0]
    T = offsets.shape[0] - 1
    B = bxy * bxy * bz
    mxy = bxy - 1
    mz = bz - 1
    bucket = np.empty(n, np.int64)
    dropped = 0
    for i in prange(n):
        x = np.float64(pts[i, 0])
        y = np.float64(pts[i, 1])
        z = np.float64(pts[i, 2])
        if np.isfinite(x) and np.isfinite(y) and np.isfinite(z):
            bucket[i] = (((_nb_vcoord(z, ivz) & mz) * bxy + (_nb_vcoord(y, ivy) & mxy)) * bxy
                         + (_nb_vcoord(x, ivx) & mxy))
        else:
            bucket[i] = -1
            dropped += 1
    for t in prange(T):
        base = t * (B + 1)
        s = offsets[t]
        e = offsets[t + 1]
        for j in range(base, base + B + 1):
            starts[j] = 0
        for i in range(s, e):
            b = bucket[i]
            if b >= 0:
                starts[base + 1 + b] += 1
        run = s  # exclusive scan into starts[base+1+b] (= begin of b), frame's slots start at s
        starts[base] = s
        for b in range(B):
            c = starts[base + 1 + b]
            starts[base + 1 + b] = run
            run += c
        for i in range(s, e):  # sequential: each bucket keeps point order; cursor ends at end(b)
            b = bucket[i]
            if b >= 0:
                p = starts[base + 1 + b]
                sorted_idx[p] = i
                sorted_xyz[p, 0] = pts[i, 0]
                sorted_xyz[p, 1] = pts[i, 1]
                sorted_xyz[p, 2] = pts[i, 2]
                starts[base + 1 + b] = p + 1
    return dropped


@numba.njit(parallel=True, cache=True)
def _nb_query(sorted_xyz, offsets, cyl, ivx, ivy, ivz, bxy, bz, starts, sorted_idx, cap, seed,
              out_idx, out_cnt):
    T = cyl.shape[0]
    K = cyl.shape[1]
    B = bxy * bxy * bz
    mxy = bxy - 1
    mz = bz - 1
    s0 = _nb_mix32(seed) if seed >= 0 else 0
    for q in prange(T * K):
        t = q // K
        k = q - t * K
        heap = np.empty(cap, np.int64)
        hn = 0
        cnt = 0
        cx = cyl[t, k, 0]
        cy = cyl[t, k, 1]
        r2 = cyl[t, k, 2]
        zlo = cyl[t, k, 3]
        zhi = cyl[t, k, 4]
        rq = cyl[t, k, 5]
        if r2 >= 0.0 and offsets[t + 1] > offsets[t]:
            ix0 = _nb_vcoord(cx - rq, ivx)
            nx = min(_nb_vcoord(cx + rq, ivx) - ix0 + 1, bxy)
            iy0 = _nb_vcoord(cy - rq, ivy)
            ny = min(_nb_vcoord(cy + rq, ivy) - iy0 + 1, bxy)
            iz0 = _nb_vcoord(zlo, ivz)
            nz = min(_nb_vcoord(zhi, ivz) - iz0 + 1, bz)
            sq = _nb_mix32(s0 ^ np.int64(q))
            base = t * (B + 1)
            for a in range(nz):
                rz = (iz0 + a) & mz
                for b in range(ny):
                    ry = (iy0 + b) & mxy
                    for c in range(nx):
                        g = base + (rz * bxy + ry) * bxy + ((ix0 + c) & mxy)
                        for j in range(starts[g], starts[g + 1]):
                            pz = np.float64(sorted_xyz[j, 2])
                            if pz < zlo or pz > zhi:
                                continue
                            dx = np.float64(sorted_xyz[j, 0]) - cx
                            dy = np.float64(sorted_xyz[j, 1]) - cy
                            if dx * dx + dy * dy <= r2:
                                cnt += 1
                                i = sorted_idx[j]
                                if seed >= 0:
                                    key = ((_nb_mix32(sq ^ i) & 0x7FFFFFFF) << 32) | i
                                else:
                                    key = i
                                hn = _nb_heap_offer(heap, hn, cap, key)
        res = np.sort(heap[:hn])
        if seed >= 0:
            for a in range(hn):
                res[a] = res[a] & 0xFFFFFFFF
            res = np.sort(res)
        for a in range(hn):
            out_idx[t, k, a] = res[a]
        for a in range(hn, cap):
            out_idx[t, k, a] = -1
        out_cnt[t, k] = cnt


# --------------------------------------------------------------------------------------------------
# registered ops
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("perception::proposal_point_pool_select", mutates_args=(), device_types="cpu")
def _select_op(points: torch.Tensor, frame_offsets: torch.Tensor, cylinders: torch.Tensor,
               max_points: int, voxel_size: list[float], seed: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``points [N, C]`` float32/64, ``frame_offsets [T+1]`` int64, ``cylinders [T, K, 6]`` float64
    → ``(indices [T, K, P] int64, counts [T, K] int64, dropped [] int64)`` (numba voxel hash)."""
    pts = points.detach().contiguous().numpy()
    off = frame_offsets.contiguous().numpy()
    cyl = cylinders.detach().contiguous().numpy()
    T, K = cyl.shape[0], cyl.shape[1]
    out_idx = np.full((T, K, max_points), -1, np.int64)
    out_cnt = np.zeros((T, K), np.int64)
    dropped = 0
    if pts.shape[0] > 0:
        bxy, bz = _table_dims(off)
        ivx, ivy, ivz = (1.0 / float(v) for v in voxel_size)
        starts = np.empty(T * (bxy * bxy * bz + 1), np.int64)
        sorted_idx = np.empty(pts.shape[0], np.int64)
        sorted_xyz = np.empty((pts.shape[0], 3), pts.dtype)
        dropped = _nb_build(pts, off, ivx, ivy, ivz, bxy, bz, starts, sorted_idx, sorted_xyz)
        if T * K > 0:
            _nb_query(sorted_xyz, off, cyl, ivx, ivy, ivz, bxy, bz, starts, sorted_idx, max_points, seed,
                      out_idx, out_cnt)
    return torch.from_numpy(out_idx), torch.from_numpy(out_cnt), torch.tensor(dropped, dtype=torch.int64)


@_select_op.register_kernel("cuda")
def _select_cuda(points, frame_offsets, cylinders, max_points, voxel_size, seed):
    ext = _native.load("proposal_point_pool")
    bxy, bz = _table_dims(frame_offsets.cpu().numpy())
    ivx, ivy, ivz = (1.0 / float(v) for v in voxel_size)
    idx, cnt, dropped = ext.select(points.detach().contiguous(), frame_offsets.contiguous(),
                                   cylinders.detach().contiguous(), max_points, ivx, ivy, ivz, bxy, bz, seed)
    return idx, cnt, dropped


@_select_op.register_fake
def _select_fake(points, frame_offsets, cylinders, max_points, voxel_size, seed):
    T, K = cylinders.shape[0], cylinders.shape[1]
    return (cylinders.new_empty((T, K, max_points), dtype=torch.int64),
            cylinders.new_empty((T, K), dtype=torch.int64),
            cylinders.new_empty((), dtype=torch.int64))


@torch.library.custom_op("perception::proposal_point_gather", mutates_args=())
def _gather_op(points: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``points [N, C]``, ``indices [...]`` int64 (-1 = none) → ``[..., C]`` (zeros at -1)."""
    C = points.shape[1]
    flat = indices.reshape(-1)
    if points.shape[0] == 0:
        return points.new_zeros((*indices.shape, C))
    rows = points[flat.clamp_min(0)]
    out = torch.where((flat >= 0)[:, None], rows, torch.zeros((), dtype=points.dtype, device=points.device))
    return out.reshape(*indices.shape, C)


@_gather_op.register_fake
def _gather_fake(points, indices):
    return points.new_empty((*indices.shape, points.shape[1]))


@torch.library.custom_op("perception::proposal_point_gather_backward", mutates_args=())
def _gather_backward_op(grad: torch.Tensor, indices: torch.Tensor, n: int) -> torch.Tensor:
    """Scatter-add ``grad [..., C]`` through ``indices [...]`` into ``[n, C]`` (skipping -1)."""
    C = grad.shape[-1]
    flat = indices.reshape(-1)
    g = grad.reshape(-1, C)
    valid = flat >= 0
    out = grad.new_zeros((n, C))
    return out.index_add_(0, flat[valid], g[valid])


@_gather_backward_op.register_fake
def _gather_backward_fake(grad, indices, n):
    return grad.new_empty((n, grad.shape[-1]))


def _gather_setup(ctx, inputs, output):
    points, indices = inputs
    ctx.save_for_backward(indices)
    ctx.n = points.shape[0]


def _gather_bwd(ctx, grad):
    (indices,) = ctx.saved_tensors
    return _gather_backward_op(grad.contiguous(), indices, ctx.n), None


def _scatter_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _scatter_bwd(ctx, grad):  # the scatter-add is linear in grad: its adjoint is the gather
    (indices,) = ctx.saved_tensors
    return _gather_op(grad.contiguous(), indices), None, None


_gather_op.register_autograd(_gather_bwd, setup_context=_gather_setup)
_gather_backward_op.register_autograd(_scatter_bwd, setup_context=_scatter_setup)


# --------------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------------

def _pack(points, frame_offsets) -> tuple[torch.Tensor, list[int]]:
    """``points`` (list of ``[N_t, C]`` or one ``[N, C]``) → packed ``[N, C]`` and offsets ``[T+1]``."""
    if isinstance(points, (list, tuple)):
        if frame_offsets is not None:
            raise ValueError("frame_offsets: give it only with a packed [N, C] points tensor, not a list")
        if len(points) == 0:
            raise ValueError("points: empty list (need at least one frame to know the channel count)")
        for t, p in enumerate(points):
            check_shape(f"points[{t}]", p, 2)
        C, dt, dev = points[0].shape[1], points[0].dtype, points[0].device
        for t, p in enumerate(points):
            if p.shape[1] != C or p.dtype != dt or p.device != dev:
                raise ValueError(f"points[{t}]: every frame needs the channels, dtype and device of frame 0 "
                                 f"({C}, {dt}, {dev}), got ({p.shape[1]}, {p.dtype}, {p.device})")
        offsets = [0]
        for p in points:
            offsets.append(offsets[-1] + p.shape[0])
        return torch.cat(list(points), 0), offsets
    check_shape("points", points, 2)
    n = points.shape[0]
    if frame_offsets is None:
        return points, [0, n]
    if isinstance(frame_offsets, torch.Tensor):
        if frame_offsets.is_floating_point() or frame_offsets.is_complex() or frame_offsets.dim() != 1:
            raise ValueError(f"frame_offsets: expected a 1-D integer tensor, got {frame_offsets.dtype} "
                             f"shape {tuple(frame_offsets.shape)}")
        offsets = [int(v) for v in frame_offsets.tolist()]
    else:
        offsets = [int(v) for v in frame_offsets]
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n or any(
            b < a for a, b in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"frame_offsets: need [0, ..., N={n}] non-decreasing (T+1 entries), got {offsets}")
    return points, offsets


def _prepare(points, proposals, frame_offsets, radius_scale, z_margin, max_points, seed):
    packed, offsets = _pack(points, frame_offsets)
    if packed.shape[1] < 3:
        raise ValueError(f"points: need at least 3 channels (x, y, z), got {packed.shape[1]}")
    if not packed.is_floating_point():
        raise ValueError(f"points: expected a floating-point tensor, got {packed.dtype}")
    check_shape("proposals", proposals, 3, 7)
    T = len(offsets) - 1
    if proposals.shape[0] != T:
        raise ValueError(f"proposals: expected [T={T}, K, 7] (one set per frame), got {tuple(proposals.shape)}")
    if not proposals.is_floating_point():
        raise ValueError(f"proposals: expected a floating-point tensor, got {proposals.dtype}")
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 1:
        raise ValueError(f"max_points: expected an int >= 1, got {max_points!r}")
    if not (np.isfinite(radius_scale) and radius_scale > 0):
        raise ValueError(f"radius_scale: expected a finite value > 0, got {radius_scale!r}")
    if not (np.isfinite(z_margin) and z_margin >= 0):
        raise ValueError(f"z_margin: expected a finite value >= 0, got {z_margin!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed: expected None (first points) or an int >= 0, got {seed!r}")
    if packed.shape[0] >= 2**32:
        raise ValueError(f"points: at most 2^32 - 1 points per call, got {packed.shape[0]}")
    cyl = proposal_cylinders(proposals, radius_scale, z_margin).to(packed.device)
    return packed, offsets, cyl, int(max_points), (-1 if seed is None else int(seed))


def _count_nonfinite(packed: torch.Tensor) -> int:
    return int(packed.shape[0] - int(torch.isfinite(packed[:, :3]).all(1).sum()))


def _finish(packed, proposals, idx, cnt, canonical, dropped, gather) -> PooledPoints:
    mask = idx >= 0
    pooled = gather(packed, idx)  # [T, K, P, C]
    if canonical and pooled.numel() > 0:
        box = proposals.to(device=pooled.device, dtype=pooled.dtype)[:, :, None, :]  # [T, K, 1, 7]
        rel = pooled[..., :3] - box[..., :3]
        c, s = torch.cos(box[..., 6]), torch.sin(box[..., 6])
        local = torch.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1],
                             rel[..., 2]], dim=-1)
        local = torch.where(mask[..., None], local, torch.zeros((), dtype=local.dtype, device=local.device))
        pooled = torch.cat([local, pooled[..., 3:]], dim=-1)
    return PooledPoints(points=pooled, mask=mask, counts=cnt, indices=idx, dropped_nonfinite=dropped)


def proposal_point_pool(points: torch.Tensor | Sequence[torch.Tensor], proposals: torch.Tensor,
                        frame_offsets: torch.Tensor | Sequence[int] | None = None, *,
                        radius_scale: float = 1.0, z_margin: float = 0.0, max_points: int = 128,
                        voxel_size: Sequence[float] | None = None, canonical: bool = False,
                        seed: int | None = None, backend: str = "auto") -> PooledPoints:
    """Pool up to ``max_points`` points per (frame, proposal) from a cylinder around each proposal.

    Args:
        points: ``T`` tensors ``[N_t, C]`` (one per frame; C >= 3, xyz first), or one packed ``[N, C]``
            with ``frame_offsets [T+1]`` (frame ``t`` is rows ``offsets[t]:offsets[t+1]``; without
            offsets, one frame). Indices in the output refer to the packed (concatenated) rows.
        proposals: ``[T, K, 7]`` ``(x, y, z_bottom, dx, dy, dz, yaw)`` per frame, already propagated.
        radius_scale: cylinder radius = ``radius_scale * hypot(dx, dy) / 2``.
        z_margin: metres added below the bottom and above the top of the box (height ``dz + 2 m``).
        max_points: ``P``, points kept per (frame, proposal).
        voxel_size: ``(vx, vy, vz)`` of the hash; ``None``: mean cylinder radius and height.
        canonical: xyz of the output in the box frame (see the module docstring).
        seed: ``None`` keeps the first ``P`` inside points in point order; an int >= 0 keeps a
            seeded random subset (reproducible across backends).
        backend: ``"auto"`` | ``"torch"`` (brute-force reference) | ``"cpu"`` (numba) | ``"cuda"``.

    Returns:
        :class:`PooledPoints` (``points [T, K, P, C]``, ``mask``, ``counts``, ``indices``,
        ``dropped_nonfinite``).
    """
    packed, offsets, cyl, P, sd = _prepare(points, proposals, frame_offsets, radius_scale, z_margin,
                                           max_points, seed)
    backend = resolve(backend, packed, proposals)
    sel = packed.detach()
    if sel.dtype not in (torch.float32, torch.float64):
        sel = sel.float()
    if backend == "torch":
        idx, cnt = _select_reference(sel, offsets, cyl, P, sd)
        dropped = _count_nonfinite(sel)
    else:
        if voxel_size is None:
            vox = _auto_voxel(cyl)
        else:
            vox = [float(v) for v in voxel_size]
            if len(vox) != 3 or not all(np.isfinite(v) and v > 0 for v in vox):
                raise ValueError(f"voxel_size: expected 3 finite values > 0, got {voxel_size!r}")
        off_t = torch.tensor(offsets, dtype=torch.int64, device=packed.device)
        idx, cnt, dropped_t = _select_op(sel, off_t, cyl, P, vox, sd)
        dropped = int(dropped_t)
    return _finish(packed, proposals, idx, cnt, canonical, dropped, _gather_op)


def proposal_point_pool_reference(points: torch.Tensor | Sequence[torch.Tensor], proposals: torch.Tensor,
                                  frame_offsets: torch.Tensor | Sequence[int] | None = None, *,
                                  radius_scale: float = 1.0, z_margin: float = 0.0, max_points: int = 128,
                                  canonical: bool = False, seed: int | None = None) -> PooledPoints:
    """Plain-PyTorch :func:`proposal_point_pool`: every point tested against every proposal
    (chunked), ``topk`` for the sampling, plain indexing for the gather (torch's own autograd)."""
    packed, offsets, cyl, P, sd = _prepare(points, proposals, frame_offsets, radius_scale, z_margin,
                                           max_points, seed)
    idx, cnt = _select_reference(packed.detach(), offsets, cyl, P, sd)
    dropped = _count_nonfinite(packed.detach())

    def gather(pts, ind):
        if pts.shape[0] == 0:
            return pts.new_zeros((*ind.shape, pts.shape[1]))
        rows = pts[ind.clamp_min(0)]
        return torch.where((ind >= 0)[..., None], rows, torch.zeros((), dtype=pts.dtype, device=pts.device))

    return _finish(packed, proposals, idx, cnt, canonical, dropped, gather)
