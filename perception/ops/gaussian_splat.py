"""Splat Gaussians' features into a BEV grid (2-D Gaussians) or a voxel volume (3-D Gaussians).

GaussianFusion (Liu et al., "GaussianFusion: Gaussian-Based Multi-Sensor Fusion for End-to-End
Autonomous Driving", NeurIPS 2025) keeps the scene as 2-D Gaussians on the ground plane and renders
their features into BEV; PFDepth ("heterogeneous pinhole-fisheye depth", ACM MM 2025) fuses
multi-view features as 3-D Gaussians rendered into a volume. Both are this op:

    out[:, cell] = sum over Gaussians g with m_g(cell) <= 3 of
                   opacity_g * exp(-0.5 m_g(cell)^2) * features_g,
    m_g(x)^2 = (x - mean_g)^T Sigma_g^-1 (x - mean_g),   Sigma_g = R_g diag(scales_g)^2 R_g^T,

evaluated at every cell centre (``x_min + (i + 0.5) res``, the
:class:`~perception.geometry.grid.BevGrid` / :class:`~perception.geometry.grid.VoxelGrid`
convention): a Gaussian reaches the cells inside its 3-sigma ellipse(oid) and nothing beyond.
``R_g`` is a rotation by ``rotations[g]`` radians (counter-clockwise from +x) in 2-D and the rotation
of the quaternion ``rotations[g] = (w, x, y, z)`` (normalised here) in 3-D; ``scales`` are standard
deviations in metres (> 0). Differentiable w.r.t. means, scales, rotations, opacities and features
(the 3-sigma cut-off is a step and has no gradient, as in every splatting renderer).

Gaussians with a non-finite mean, scale, rotation or opacity are left out and counted
(``return_count=True`` returns ``(out, n_nonfinite)``); their gradients are zero.

Backends: ``"torch"`` (``*_reference``: the (Gaussian, cell) pairs of every bounding box, masked by
the cut-off, ``index_add_``), ``"cpu"`` (numba: per Gaussian and row the run of cells inside the
cut-off is solved for once (SIMD over a Gaussian's rows), and the weights along a run follow by a
two-multiplication recurrence instead of an ``exp`` per cell; the forward splits the grid into
strips of rows, each over the Gaussians that touch it, dealt into one bin per thread by estimated
work, so no two threads write one cell and clustered scenes keep both threads busy, and adds each
run with the Gaussian's features held in vector registers (:mod:`perception.ops._simd`); the
backward is one work item per Gaussian, which owns its gradients; both take the Gaussians in the
order of their first row, for locality; the 3-D kernels are the plain per-voxel versions),
``"cuda"`` (``ops/gaussian_splat/``: one block per tile of cells over the tile's Gaussian list in
the forward, one block per Gaussian in the backward; no atomics).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch

from perception.geometry.grid import BevGrid, VoxelGrid
from perception.ops._backend import check_shape, resolve
from perception.ops._simd import axpy_run

__all__ = ["gaussian_splat_bev", "gaussian_splat_bev_reference", "gaussian_splat_volume",
           "gaussian_splat_volume_reference", "quaternion_to_rotmat"]

CUTOFF = 3.0  # Mahalanobis radius: cells with m <= 3 are reached


# ----------------------------------------------------------------------------------------------
# Torch references
# ----------------------------------------------------------------------------------------------
def quaternion_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """``q [G, 4]`` (w, x, y, z; normalised here) → rotation matrices ``[G, 3, 3]`` (differentiable)."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def _pairs_in_boxes(lo: torch.Tensor, hi: torch.Tensor, start: int, end: int):
    """Every (Gaussian, cell) pair of the boxes ``lo[g] <= idx <= hi[g]`` (``[G, A]`` int64), g in [start, end).

    Returns ``(g [P], idx [P, A])``.
    """
    size = (hi[start:end] - lo[start:end] + 1).clamp(min=0)          # [g, A] cells per axis
    counts = size.prod(dim=1)
    g = torch.repeat_interleave(torch.arange(start, end, device=lo.device), counts)
    k = torch.arange(g.numel(), device=lo.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    idx = torch.empty(g.numel(), lo.shape[1], dtype=torch.long, device=lo.device)
    for a in reversed(range(lo.shape[1])):                           # the last axis runs fastest
        n = size[g - start, a]
        idx[:, a] = lo[g, a] + k % n
        k = k // n
    return g, idx


def _splat_reference(means, rotm, scales, opacities, features, origin, cell, shape, chunk_pairs):
    """The shared reference, ``A`` = 2 or 3 axes: ``rotm [G, A, A]`` (columns: the Gaussian's axes)."""
    G, A = means.shape
    C = features.shape[1]
    out = features.new_zeros(math.prod(shape), C)
    if G == 0 or out.numel() == 0:
        return out.T.reshape(C, *shape)
    origin_t = torch.tensor(origin, dtype=means.dtype, device=means.device)
    cell_t = torch.tensor(cell, dtype=means.dtype, device=means.device)
    shape_t = torch.tensor(shape, dtype=means.dtype, device=means.device)
    with torch.no_grad():  # bounding box of the 3-sigma ellipsoid: every cell it overlaps (generous by design)
        half = CUTOFF * torch.sqrt(((rotm * scales[:, None, :]) ** 2).sum(dim=2))   # [G, A] 3 sqrt(Sigma_aa)
        lo = torch.floor((means - half - origin_t) / cell_t).clamp(torch.zeros_like(shape_t), shape_t).long()
        hi = torch.floor((means + half - origin_t) / cell_t).clamp(-torch.ones_like(shape_t), shape_t - 1).long()
        counts = (hi - lo + 1).clamp(min=0).prod(dim=1)
        cum = torch.cumsum(counts, 0)
    strides = torch.tensor([math.prod(shape[a + 1:]) for a in range(A)], device=means.device)
    start = 0
    while start < G:  # Gaussians in chunks of about chunk_pairs (Gaussian, cell) pairs
        done = int(cum[start - 1]) if start else 0
        end = max(int(torch.searchsorted(cum, done + chunk_pairs, right=True)), start + 1)
        g, idx = _pairs_in_boxes(lo, hi, start, end)
        offset = origin_t + (idx + 0.5) * cell_t - means[g]                 # [P, A] cell centre - mean
        local = torch.einsum("pab,pa->pb", rotm[g], offset) / scales[g]      # R^T offset / scales
        d2 = (local ** 2).sum(dim=1)                                         # squared Mahalanobis distance
        keep = d2 <= CUTOFF ** 2
        w = opacities[g[keep]] * torch.exp(-0.5 * d2[keep])
        out = out.index_add(0, (idx[keep] * strides).sum(dim=1), w[:, None] * features[g[keep]])
        start = end
    return out.T.reshape(C, *shape)


def rotation_2d(rotations: torch.Tensor) -> torch.Tensor:
    """``[G]`` angles (rad) → ``[G, 2, 2]`` rotation matrices."""
    c, s = torch.cos(rotations), torch.sin(rotations)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def gaussian_splat_bev_reference(means, scales, rotations, opacities, features, grid: BevGrid,
                                 chunk_pairs: int = 1 << 20) -> torch.Tensor:
    """Plain-PyTorch :func:`gaussian_splat_bev` (finite inputs) → ``[C, nx, ny]``.

    For each Gaussian, every cell its 3-sigma box overlaps is paired with it; the pairs with
    Mahalanobis distance <= 3 add ``opacity * exp(-d^2 / 2) * feature`` by ``index_add``. Taken
    ``chunk_pairs`` pairs at a time.
    """
    return _splat_reference(means, rotation_2d(rotations), scales, opacities, features,
                            (grid.x_min, grid.y_min), (grid.resolution,) * 2, grid.shape, chunk_pairs)


def gaussian_splat_volume_reference(means, scales, rotations, opacities, features, grid: VoxelGrid,
                                    chunk_pairs: int = 1 << 20) -> torch.Tensor:
    """Plain-PyTorch :func:`gaussian_splat_volume` (finite inputs; quaternions) → ``[C, X, Y, Z]``."""
    return _splat_reference(means, quaternion_to_rotmat(rotations), scales, opacities, features,
                            grid.origin, grid.voxel_size, grid.shape, chunk_pairs)


# ----------------------------------------------------------------------------------------------
# numba CPU kernels
# ----------------------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _clamped_exp(x):  # pragma: no cover - compiled
    return math.exp(min(max(x, -700.0), 700.0))


_PAD = 1e-6  # relative slack on the kernels' bounding boxes (their tests are exact; this only adds cells)


@numba.njit(cache=True, inline="always")
def _axis_range(m, half, lo, cell, n):  # pragma: no cover - compiled
    """Cells along one axis whose centre lies within ``m ± half``: (first, last), last < first if none."""
    a = math.ceil((m - half - lo) / cell - 0.5)
    b = math.floor((m + half - lo) / cell - 0.5)
    a = max(a, 0.0)
    b = min(b, n - 1.0)
    if not a <= b:
        return 0, -1
    return np.int64(a), np.int64(b)


@numba.njit(parallel=True, cache=True)
def _boxes2d(means, scales, rots, lims, nx, ny):  # pragma: no cover - compiled
    """``[G, 4]`` (i0, i1, j0, j1) cell boxes of the 3-sigma ellipses (i1 < i0 when empty)."""
    G = means.shape[0]
    box = np.empty((G, 4), np.int64)
    for g in numba.prange(G):
        c = math.cos(np.float64(rots[g]))
        s = math.sin(np.float64(rots[g]))
        sx = np.float64(scales[g, 0])
        sy = np.float64(scales[g, 1])
        hx = 3.0 * math.sqrt((c * sx) ** 2 + (s * sy) ** 2) * (1 + _PAD)
        hy = 3.0 * math.sqrt((s * sx) ** 2 + (c * sy) ** 2) * (1 + _PAD)
        box[g, 0], box[g, 1] = _axis_range(np.float64(means[g, 0]), hx, lims[0], lims[2], nx)
        box[g, 2], box[g, 3] = _axis_range(np.float64(means[g, 1]), hy, lims[1], lims[2], ny)
    return box


@numba.njit(parallel=True, cache=True)
def _params2d(means, scales, rots, opac, res):  # pragma: no cover - compiled
    """``[G, 12]`` float64 per Gaussian for the 2-D kernels.

    mx, my, cos, sin, 1/sx, 1/sy, opacity, exp(-A res^2), A, 1/A, kB, kD: with u = (c dx + s dy)/sx,
    v = (c dy - s dx)/sy, d2 = u^2 + v^2 = A dy^2 + 2 kB dx dy + kK dx^2, and kD = kB^2 - A kK.
    """
    G = means.shape[0]
    prm = np.empty((G, 12))
    for g in numba.prange(G):
        c = math.cos(np.float64(rots[g]))
        s = math.sin(np.float64(rots[g]))
        isx = 1.0 / np.float64(scales[g, 0])
        isy = 1.0 / np.float64(scales[g, 1])
        ay = s * isx            # du/ddy
        by = c * isy            # dv/ddy
        px = c * isx            # du/ddx
        qx = -s * isy           # dv/ddx
        A = ay * ay + by * by
        kB = px * ay + qx * by
        kK = px * px + qx * qx
        prm[g, 0] = means[g, 0]
        prm[g, 1] = means[g, 1]
        prm[g, 2] = c
        prm[g, 3] = s
        prm[g, 4] = isx
        prm[g, 5] = isy
        prm[g, 6] = opac[g]
        prm[g, 7] = _clamped_exp(-A * res * res)
        prm[g, 8] = A
        prm[g, 9] = 1.0 / A
        prm[g, 10] = kB
        prm[g, 11] = kB * kB - A * kK
    return prm


@numba.njit(parallel=True, cache=True)
def _boxes3d(means, scales, rotm, lims, X, Y, Z):  # pragma: no cover - compiled
    """``[G, 6]`` (i0, i1, j0, j1, k0, k1) voxel boxes of the 3-sigma ellipsoids."""
    G = means.shape[0]
    box = np.empty((G, 6), np.int64)
    dims = (X, Y, Z)
    for g in numba.prange(G):
        for a in range(3):
            var = 0.0
            for k in range(3):
                var += (np.float64(rotm[g, a, k]) * np.float64(scales[g, k])) ** 2
            half = 3.0 * math.sqrt(var) * (1 + _PAD)
            box[g, 2 * a], box[g, 2 * a + 1] = _axis_range(np.float64(means[g, a]), half, lims[a],
                                                           lims[3 + a], dims[a])
    return box


@numba.njit(cache=True)
def _tile_lists(box, tile, ntiles):  # pragma: no cover - compiled
    """CSR (ptr [T+1], gaussians) of the tiles each box touches; Gaussians in increasing order per tile."""
    G, A2 = box.shape
    A = A2 // 2
    n_t = 1
    for a in range(A):
        n_t *= ntiles[a]
    counts = np.zeros(n_t + 1, np.int64)
    lo = np.empty(A, np.int64)
    hi = np.empty(A, np.int64)
    for phase in range(2):
        if phase == 1:
            for t in range(n_t):
                counts[t + 1] += counts[t]
            fill = counts[:-1].copy()
            lst = np.empty(counts[n_t], np.int64)
        for g in range(G):
            empty = False
            for a in range(A):
                if box[g, 2 * a + 1] < box[g, 2 * a]:
                    empty = True
                lo[a] = box[g, 2 * a] // tile[a]
                hi[a] = box[g, 2 * a + 1] // tile[a]
            if empty:
                continue
            # walk the tile box (A = 2 or 3; a padded third axis of one tile for 2-D)
            for ti in range(lo[0], hi[0] + 1):
                for tj in range(lo[1], hi[1] + 1):
                    for tk in range(lo[2] if A == 3 else 0, (hi[2] if A == 3 else 0) + 1):
                        t = ti * ntiles[1] + tj
                        if A == 3:
                            t = t * ntiles[2] + tk
                        if phase == 0:
                            counts[t + 1] += 1
                        else:
                            lst[fill[t]] = g
                            fill[t] += 1
    return counts, lst


@numba.njit(cache=True)
def _order_by_row(box, nx):  # pragma: no cover - compiled
    """The Gaussians with a non-empty box, by the row their box starts in (stable counting sort):
    ``(order, start)``, ``start[i]`` = how many of them start before row i (``[nx + 1]``)."""
    G = box.shape[0]
    start = np.zeros(nx + 1, np.int64)
    for g in range(G):
        if box[g, 1] >= box[g, 0] and box[g, 3] >= box[g, 2]:
            start[box[g, 0] + 1] += 1
    for i in range(nx):
        start[i + 1] += start[i]
    fill = start[:-1].copy()
    order = np.empty(start[nx], np.int64)
    for g in range(G):
        if box[g, 1] >= box[g, 0] and box[g, 3] >= box[g, 2]:
            order[fill[box[g, 0]]] = g
            fill[box[g, 0]] += 1
    return order, start


@numba.njit(parallel=True, cache=True)
def _strip_ranges(box, start, TI, ny):  # pragma: no cover - compiled
    """For strips of TI rows over boxes sorted by first row (:func:`_order_by_row`): each strip's range
    of candidate Gaussians ``[glo, ghi)`` (those starting at most one box height before it and not
    after it; the kernel skips the ones that end before it) and its estimated work: the cells of
    its boxes' rows plus one pass over its own cells."""
    nx = start.shape[0] - 1
    nstrips = -(-nx // TI)
    hmax = 1
    for g in range(box.shape[0]):
        hmax = max(hmax, box[g, 1] - box[g, 0] + 1)
    glo = np.empty(nstrips, np.int64)
    ghi = np.empty(nstrips, np.int64)
    work = np.empty(nstrips, np.int64)
    for t in numba.prange(nstrips):
        ilo = t * TI
        ihi = min(ilo + TI, nx) - 1
        glo[t] = start[max(ilo - hmax + 1, 0)]
        ghi[t] = start[ihi + 1]
        w = TI * ny
        for g in range(glo[t], ghi[t]):
            if box[g, 1] >= ilo:
                w += (min(box[g, 1], ihi) - max(box[g, 0], ilo) + 1) * (box[g, 3] - box[g, 2] + 1)
        work[t] = w
    return glo, ghi, work


@numba.njit(parallel=True, cache=True)
def _take_rows(src, order):  # pragma: no cover - compiled
    """``src[order]`` for a 2-D array, rows copied in parallel."""
    dst = np.empty((order.shape[0], src.shape[1]), src.dtype)
    for k in numba.prange(order.shape[0]):
        for c in range(src.shape[1]):
            dst[k, c] = src[order[k], c]
    return dst


@numba.njit(cache=True)
def _balance(work, nbins):  # pragma: no cover - compiled
    """Items into ``nbins`` bins of about equal total work (heaviest first, each to the lightest bin):
    CSR (bptr [nbins+1], items), each bin's items heaviest first."""
    n = work.shape[0]
    order = np.argsort(-work, kind="mergesort")
    load = np.zeros(nbins, np.int64)
    which = np.empty(n, np.int64)
    bptr = np.zeros(nbins + 1, np.int64)
    for q in range(n):
        b = np.argmin(load)
        which[q] = b
        load[b] += work[order[q]]
        bptr[b + 1] += 1
    for b in range(nbins):
        bptr[b + 1] += bptr[b]
    fill = bptr[:-1].copy()
    items = np.empty(n, np.int64)
    for q in range(n):
        items[fill[which[q]]] = order[q]
        fill[which[q]] += 1
    return bptr, items


@numba.njit(cache=True, inline="always", fastmath=True)
def _exp_in(x):  # pragma: no cover - compiled
    """``exp(x)`` for ``x`` in [-4.5, 0] (the weight of a cell inside the cut-off), relative error < 1e-14.

    Taylor polynomial of ``exp(x / 8)`` to degree 14, squared three times: inline, no libm call and
    no range reduction (the cut-off bounds the argument).
    """
    y = x * 0.125
    p = 1.0 / 87178291200.0
    p = p * y + 1.0 / 6227020800.0
    p = p * y + 1.0 / 479001600.0
    p = p * y + 1.0 / 39916800.0
    p = p * y + 1.0 / 3628800.0
    p = p * y + 1.0 / 362880.0
    p = p * y + 1.0 / 40320.0
    p = p * y + 1.0 / 5040.0
    p = p * y + 1.0 / 720.0
    p = p * y + 1.0 / 120.0
    p = p * y + 1.0 / 24.0
    p = p * y + 1.0 / 6.0
    p = p * y + 0.5
    p = p * y + 1.0
    p = p * y + 1.0
    p = p * p
    p = p * p
    return p * p


@numba.njit(cache=True, inline="always")
def _d2_2d(dx, dy, c, s, isx, isy):  # pragma: no cover - compiled
    """Squared Mahalanobis distance of offset (dx, dy): u = (c dx + s dy) / sx, v = (c dy - s dx) / sy."""
    u = (c * dx + s * dy) * isx
    v = (c * dy - s * dx) * isy
    return u * u + v * v


@numba.njit(cache=True, inline="always")
def _row_span(prm, g, dx, y0, res, jmin, jmax):  # pragma: no cover - compiled
    """The cells ``j`` in ``[jmin, jmax]`` of a row at x-offset ``dx`` with d2 <= 9: (first, last).

    Along the row d2 = A dy^2 + 2 B dy + K is a convex quadratic in dy (B = kB dx, K = kK dx^2,
    from :func:`_params2d`), so the cells form one run: solve for its ends; an end that lands within
    rounding of a cell centre (or a run of under two cells, where the roots are ill-conditioned) is
    settled with the exact per-cell test (:func:`_d2_2d`), so runs agree with that test.
    """
    disc = dx * dx * prm[g, 11] + 9.0 * prm[g, 8]          # B^2 - A (K - 9)
    if disc < -1e-9 * prm[g, 8]:                             # (a tangent row within rounding is settled)
        return np.int64(1), np.int64(0)
    disc = max(disc, 0.0)
    ires = 1.0 / res
    sq = math.sqrt(disc) * prm[g, 9] * ires
    mid = (prm[g, 1] - y0 - dx * prm[g, 10] * prm[g, 9]) * ires - 0.5
    a0 = mid - sq                                           # the run's ends in (real) cell index
    a1 = mid + sq
    fl0 = math.floor(a0)
    fl1 = math.floor(a1)
    j0 = np.int64(min(max(fl0 + 1.0, jmin - 1.0), jmax + 1.0)) if a0 > fl0 else np.int64(
        min(max(fl0, jmin - 1.0), jmax + 1.0))
    j1 = np.int64(min(max(fl1, jmin - 1.0), jmax + 1.0))
    j0 = max(j0, jmin)
    j1 = min(j1, jmax)
    short = a1 - a0 < 2.0
    if short or a0 - fl0 < 1e-6 or a0 - fl0 > 1.0 - 1e-6:
        my, c, s, isx, isy = prm[g, 1], prm[g, 2], prm[g, 3], prm[g, 4], prm[g, 5]
        while j0 > jmin and _d2_2d(dx, y0 + (j0 - 0.5) * res - my, c, s, isx, isy) <= 9.0:
            j0 -= 1
        while j0 <= jmax and _d2_2d(dx, y0 + (j0 + 0.5) * res - my, c, s, isx, isy) > 9.0:
            j0 += 1
    if short or a1 - fl1 < 1e-6 or a1 - fl1 > 1.0 - 1e-6:
        my, c, s, isx, isy = prm[g, 1], prm[g, 2], prm[g, 3], prm[g, 4], prm[g, 5]
        while j1 < jmax and _d2_2d(dx, y0 + (j1 + 1.5) * res - my, c, s, isx, isy) <= 9.0:
            j1 += 1
        while j1 >= jmin and j1 >= j0 and _d2_2d(dx, y0 + (j1 + 0.5) * res - my, c, s, isx, isy) > 9.0:
            j1 -= 1
    return j0, j1


@numba.njit(cache=True)
def _row_ptr(box):  # pragma: no cover - compiled
    """``[G + 1]`` offsets of each Gaussian's rows, the rows of its (non-empty: :func:`_order_by_row`) box."""
    rptr = np.zeros(box.shape[0] + 1, np.int64)
    for g in range(box.shape[0]):
        rptr[g + 1] = rptr[g] + box[g, 1] - box[g, 0] + 1
    return rptr


@numba.njit(parallel=True, cache=True, fastmath=True)
def _runs2d(prm, box, lims, rptr):  # pragma: no cover - compiled
    """Every Gaussian's run in every row of its box, solved once for both passes.

    Returns ``(j0, j1, e, r)``, each ``[rptr[-1]]`` (record ``rptr[g] + i - box[g, 0]`` is row i of
    Gaussian g): the run's cells ``j0..j1`` (``j1 < j0`` when the row misses the cut-off; see
    :func:`_row_span`), its first weight ``e = exp(-d2/2)`` and the ratio ``r`` of the next cell's
    weight to it (1 for a one-cell run). The rows of a Gaussian are contiguous, so the solve and the
    two ``exp`` run as SIMD loops over them; only the few runs whose ends land within rounding of a
    cell centre go through the exact scalar test.
    """
    R = rptr[-1]
    G = box.shape[0]
    x0, y0, res = lims[0], lims[1], lims[2]
    ires = 1.0 / res
    rj0 = np.empty(R, np.int32)
    rj1 = np.empty(R, np.int32)
    rea = np.empty(R)
    rra = np.empty(R)
    near = np.empty(R, np.bool_)
    nchunks = min(G, 256)
    for t in numba.prange(nchunks):
        for g in range(t * G // nchunks, (t + 1) * G // nchunks):
            base = rptr[g]
            nr = rptr[g + 1] - base
            if nr == 0:
                continue
            j0 = rj0[base:base + nr]  # views indexed from 0: numba can then prove the accesses contiguous
            j1 = rj1[base:base + nr]
            ev = rea[base:base + nr]
            rv = rra[base:base + nr]
            nv = near[base:base + nr]
            mx, my, c, s, isx, isy = prm[g, 0], prm[g, 1], prm[g, 2], prm[g, 3], prm[g, 4], prm[g, 5]
            A, iA, kB, kD = prm[g, 8], prm[g, 9], prm[g, 10], prm[g, 11]
            lo = np.float64(box[g, 2])
            hi = np.float64(box[g, 3])
            dx0 = x0 + (box[g, 0] + 0.5) * res - mx
            for k in range(nr):  # the run's ends from the quadratic (as in _row_span)
                dx = dx0 + k * res
                disc = dx * dx * kD + 9.0 * A
                sq = math.sqrt(max(disc, 0.0)) * iA * ires
                mid = (my - y0 - dx * kB * iA) * ires - 0.5
                a0 = mid - sq
                a1 = mid + sq
                c0 = math.ceil(a0)
                f1 = math.floor(a1)
                j0[k] = np.int32(max(min(c0, hi + 1.0), lo))
                j1[k] = np.int32(min(max(f1, lo - 1.0), hi))
                fr0 = c0 - a0
                fr1 = a1 - f1
                nv[k] = ((fr0 < 1e-6) | (fr0 > 1.0 - 1e-6) | (fr1 < 1e-6) | (fr1 > 1.0 - 1e-6)
                         | (a1 - a0 < 2.0) | (disc < -1e-9 * A))
            for k in range(nr):  # ends within rounding of a centre, short runs, tangent rows: exact test
                if nv[k]:
                    j0[k], j1[k] = _row_span(prm, g, dx0 + k * res, y0, res, box[g, 2], box[g, 3])
            for k in range(nr):  # weight at the first cell and the ratio to the next
                dx = dx0 + k * res
                dy = y0 + (j0[k] + 0.5) * res - my
                u = (c * dx + s * dy) * isx
                v = (c * dy - s * dx) * isy
                u1 = u + s * isx * res
                v1 = v + c * isy * res
                e = _exp_in(max(-0.5 * (u * u + v * v), -8.0))     # (clamped: an empty row's values are unused)
                e1 = _exp_in(max(-0.5 * (u1 * u1 + v1 * v1), -8.0))
                ev[k] = e
                rv[k] = e1 / e if j1[k] > j0[k] else 1.0
    return rj0, rj1, rea, rra


@numba.njit(cache=True, inline="always")
def _accumulate_run(accf, k, ff, g, C, n, w0, r, qf, alpha, wv):  # pragma: no cover - compiled
    """``acc[k + j] += alpha e_j feats[g]`` for the run's ``n`` cells (``accf``/``ff`` flat ``[*, C]``;
    e_0 = w0, e_{j+1} = e_j r_j, r_{j+1} = r_j qf): channels in blocks of 64 and 16 with the
    Gaussian's features held in registers (:func:`~perception.ops._simd.axpy_run`), the rest (C mod 16)
    one by one."""
    c = 0
    while c + 64 <= C:
        axpy_run(accf, k * C + c, C, ff, g * C + c, n, w0, r, qf, alpha, 64)
        c += 64
    while c + 16 <= C:
        axpy_run(accf, k * C + c, C, ff, g * C + c, n, w0, r, qf, alpha, 16)
        c += 16
    if c < C:
        ew = w0
        for j in range(n):
            wv[0] = alpha * ew  # the weight in the data's dtype
            w = wv[0]
            b = (k + j) * C
            for ch in range(c, C):
                accf[b + ch] += w * ff[g * C + ch]
            ew *= r
            r *= qf


@numba.njit(parallel=True, cache=True, fastmath=True)
def _splat2d_fwd(prm, feats, box, glo, ghi, bptr, items, TI, runs, out):  # pragma: no cover
    """``out [C, nx, ny]``: strips of TI rows (all columns), each over the Gaussians that touch it.

    ``runs`` (:func:`_runs2d`) gives each (Gaussian, row) its run of cells with d2 <= 9, the run's
    first weight and the ratio to the next; along the run ``exp(-d2/2)`` follows from d2 being
    quadratic in the cell index: two multiplications per cell (``e *= r; r *= q``, exact up to
    rounding) replace the ``exp``. Whole rows per strip: no run is cut. The accumulate of the
    (Gaussian, cell) pairs is :func:`_accumulate_run` (features in registers, four independent
    weight recurrences). The inputs come in the order of their first row (:func:`_plan2d`), so a
    strip reads its Gaussians' parameters, runs and features from nearby memory.

    Load balance: strips differ several-fold in work (clustered means), and numba's ``prange``
    splits its range statically (``parallel_chunksize`` does not make the OpenMP layer hand out
    iterations one at a time), so the strips are dealt into one bin per thread beforehand
    (:func:`_balance` on :func:`_strip_ranges`' estimate, ``bptr``/``items``) and ``prange`` runs
    over the bins.
    """
    C, nx, ny = out.shape
    rptr, rj0, rj1, re, rr = runs
    U = np.uint64
    ff = feats.reshape(feats.shape[0] * C)
    of = out.reshape(C * nx * ny)
    for bn in numba.prange(bptr.shape[0] - 1):
        acc = np.empty((TI * ny, C), out.dtype)
        accf = acc.reshape(TI * ny * C)
        wv = np.empty(1, out.dtype)
        for q in range(bptr[bn], bptr[bn + 1]):
            t = items[q]
            ilo = t * TI
            ihi = min(ilo + TI, nx) - 1
            accf[:] = 0
            for g in range(glo[t], ghi[t]):
                if box[g, 1] < ilo:
                    continue
                alpha, qf = prm[g, 6], prm[g, 7]
                for i in range(max(box[g, 0], ilo), min(box[g, 1], ihi) + 1):
                    p = rptr[g] + i - box[g, 0]
                    j0, j1 = rj0[p], rj1[p]
                    if j1 < j0:
                        continue
                    _accumulate_run(accf, (i - ilo) * ny + j0, ff, g, C, j1 - j0 + 1, re[p], rr[p], qf, alpha, wv)
            for i in range(ilo, ihi + 1):  # [cell, C] -> out[C, i, :]
                for j in range(ny):
                    ab = U((i - ilo) * ny + j) * U(C)
                    ob = U(i * ny + j)
                    for ch in range(U(C)):
                        of[ob + ch * U(nx * ny)] = accf[ab + ch]
    return out


@numba.njit(parallel=True, cache=True, fastmath=True)
def _splat2d_bwd(gout, prm, feats, lims, box, runs, g_means, g_scales, g_rots, g_opac, g_feats):  # pragma: no cover
    """``gout [nx, ny, C]`` (channel-last grad): one work item per Gaussian, which owns its grads.

    The same runs and weight recurrence as the forward; u and v step linearly along a run.
    """
    G, C = feats.shape
    x0, y0, res = lims[0], lims[1], lims[2]
    rptr, rj0, rj1, re, rr = runs
    n_chunks = min(G, 256)
    for t in numba.prange(n_chunks):
        wv = np.zeros(2, g_feats.dtype)  # [weight, 0] in the data's dtype
        for g in range(t * G // n_chunks, (t + 1) * G // n_chunks):
            c, s = prm[g, 2], prm[g, 3]
            isx, isy, alpha, qf = prm[g, 4], prm[g, 5], prm[g, 6], prm[g, 7]
            sx = 1.0 / isx
            sy = 1.0 / isy
            du = s * isx * res
            dv = c * isy * res
            for ch in range(C):
                g_feats[g, ch] = 0
            gmx = gmy = gsx = gsy = grot = gop = 0.0
            for i in range(box[g, 0], box[g, 1] + 1):
                p = rptr[g] + i - box[g, 0]
                j0, j1, e, r = rj0[p], rj1[p], re[p], rr[p]
                if j1 < j0:
                    continue
                dx = x0 + (i + 0.5) * res - prm[g, 0]
                dy = y0 + (j0 + 0.5) * res - prm[g, 1]
                u = (c * dx + s * dy) * isx
                v = (c * dy - s * dx) * isy
                for j in range(j0, j1 + 1):
                    wv[0] = alpha * e
                    w = wv[0]
                    dot = wv[1]
                    for ch in range(C):
                        go = gout[i, j, ch]
                        dot += go * feats[g, ch]
                        g_feats[g, ch] += w * go
                    gop += e * dot
                    dd2 = -0.5 * alpha * e * dot          # dL / d(d2)
                    # d2 = u^2 + v^2, u = (c dx + s dy) / sx, v = (c dy - s dx) / sy, dx = x - mx
                    gmx += dd2 * (-2.0 * u * c * isx + 2.0 * v * s * isy)
                    gmy += dd2 * (-2.0 * u * s * isx - 2.0 * v * c * isy)
                    gsx += dd2 * (-2.0 * u * u * isx)
                    gsy += dd2 * (-2.0 * v * v * isy)
                    grot += dd2 * (2.0 * u * v * (sy * isx - sx * isy))
                    u += du
                    v += dv
                    e *= r
                    r *= qf
            g_means[g, 0] = gmx
            g_means[g, 1] = gmy
            g_scales[g, 0] = gsx
            g_scales[g, 1] = gsy
            g_rots[g] = grot
            g_opac[g] = gop
    return g_feats


@numba.njit(cache=True, inline="always")
def _local3(rotm, g, isc, dx, dy, dz):  # pragma: no cover - compiled
    """``u = R^T (x - m) / scales`` for Gaussian g."""
    u0 = (rotm[g, 0, 0] * dx + rotm[g, 1, 0] * dy + rotm[g, 2, 0] * dz) * isc[0]
    u1 = (rotm[g, 0, 1] * dx + rotm[g, 1, 1] * dy + rotm[g, 2, 1] * dz) * isc[1]
    u2 = (rotm[g, 0, 2] * dx + rotm[g, 1, 2] * dy + rotm[g, 2, 2] * dz) * isc[2]
    return u0, u1, u2


@numba.njit(parallel=True, cache=True, fastmath=True)
def _splat3d_fwd(means, scales, rotm, opac, feats, lims, box, ptr, lst, T, out):  # pragma: no cover
    """``out [C, X, Y, Z]``: one work item per T^3 tile (rotm float64 [G, 3, 3])."""
    C, X, Y, Z = out.shape
    ntx = (X + T - 1) // T
    nty = (Y + T - 1) // T
    ntz = (Z + T - 1) // T
    for t in numba.prange(ntx * nty * ntz):
        ilo = (t // (nty * ntz)) * T
        jlo = ((t // ntz) % nty) * T
        klo = (t % ntz) * T
        ihi = min(ilo + T, X) - 1
        jhi = min(jlo + T, Y) - 1
        khi = min(klo + T, Z) - 1
        acc = np.zeros((T * T * T, C), out.dtype)
        wv = np.empty(1, out.dtype)
        isc = np.empty(3)
        for e in range(ptr[t], ptr[t + 1]):
            g = lst[e]
            for a in range(3):
                isc[a] = 1.0 / np.float64(scales[g, a])
            alpha = np.float64(opac[g])
            for i in range(max(box[g, 0], ilo), min(box[g, 1], ihi) + 1):
                dx = lims[0] + (i + 0.5) * lims[3] - np.float64(means[g, 0])
                for j in range(max(box[g, 2], jlo), min(box[g, 3], jhi) + 1):
                    dy = lims[1] + (j + 0.5) * lims[4] - np.float64(means[g, 1])
                    for k in range(max(box[g, 4], klo), min(box[g, 5], khi) + 1):
                        dz = lims[2] + (k + 0.5) * lims[5] - np.float64(means[g, 2])
                        u0, u1, u2 = _local3(rotm, g, isc, dx, dy, dz)
                        d2 = u0 * u0 + u1 * u1 + u2 * u2
                        if d2 <= 9.0:
                            wv[0] = alpha * math.exp(-0.5 * d2)
                            w = wv[0]
                            q = ((i - ilo) * T + (j - jlo)) * T + (k - klo)
                            for ch in range(C):
                                acc[q, ch] += w * feats[g, ch]
        for ch in range(C):
            for i in range(ilo, ihi + 1):
                for j in range(jlo, jhi + 1):
                    for k in range(klo, khi + 1):
                        out[ch, i, j, k] = acc[((i - ilo) * T + (j - jlo)) * T + (k - klo), ch]
    return out


@numba.njit(parallel=True, cache=True, fastmath=True)
def _splat3d_bwd(gout, means, scales, rotm, opac, feats, lims, box,
                 g_means, g_scales, g_rotm, g_opac, g_feats):  # pragma: no cover
    """``gout [X, Y, Z, C]`` channel-last; one work item per Gaussian (grads w.r.t. the rotation matrix)."""
    G, C = feats.shape
    n_chunks = min(G, 256)
    for t in numba.prange(n_chunks):
        wv = np.zeros(2, g_feats.dtype)
        isc = np.empty(3)
        gm = np.empty(3)
        gs = np.empty(3)
        gr = np.empty((3, 3))
        for g in range(t * G // n_chunks, (t + 1) * G // n_chunks):
            for a in range(3):
                isc[a] = 1.0 / np.float64(scales[g, a])
                gm[a] = 0.0
                gs[a] = 0.0
                for b in range(3):
                    gr[a, b] = 0.0
            alpha = np.float64(opac[g])
            for ch in range(C):
                g_feats[g, ch] = 0
            gop = 0.0
            for i in range(box[g, 0], box[g, 1] + 1):
                dx = lims[0] + (i + 0.5) * lims[3] - np.float64(means[g, 0])
                for j in range(box[g, 2], box[g, 3] + 1):
                    dy = lims[1] + (j + 0.5) * lims[4] - np.float64(means[g, 1])
                    for k in range(box[g, 4], box[g, 5] + 1):
                        dz = lims[2] + (k + 0.5) * lims[5] - np.float64(means[g, 2])
                        u0, u1, u2 = _local3(rotm, g, isc, dx, dy, dz)
                        d2 = u0 * u0 + u1 * u1 + u2 * u2
                        if d2 <= 9.0:
                            e = math.exp(-0.5 * d2)
                            wv[0] = alpha * e
                            w = wv[0]
                            dot = wv[1]
                            for ch in range(C):
                                go = gout[i, j, k, ch]
                                dot += go * feats[g, ch]
                                g_feats[g, ch] += w * go
                            gop += e * dot
                            dd2 = -0.5 * alpha * e * dot
                            # d2 = sum_b u_b^2, u_b = (sum_a R_ab d_a) / s_b, d = x - m
                            for b in range(3):
                                ub = u0 if b == 0 else (u1 if b == 1 else u2)
                                h = 2.0 * dd2 * ub * isc[b]          # dL/d(sum_a R_ab d_a)
                                gs[b] -= h * ub                       # dd2 * (-2 u_b^2 / s_b)
                                gr[0, b] += h * dx
                                gr[1, b] += h * dy
                                gr[2, b] += h * dz
                                for a in range(3):
                                    gm[a] -= h * rotm[g, a, b]
            for a in range(3):
                g_means[g, a] = gm[a]
                g_scales[g, a] = gs[a]
                for b in range(3):
                    g_rotm[g, a, b] = gr[a, b]
            g_opac[g] = gop
    return g_feats


# ----------------------------------------------------------------------------------------------
# Tiles and boxes for the CUDA kernels (torch, on the device)
# ----------------------------------------------------------------------------------------------
def _tile_lists_torch(means, half, origin, cell, shape, tile):
    """CSR (ptr [T+1], gaussians) of the tiles (``tile[a]`` cells per axis) each 3-sigma box touches.

    Torch ops on the Gaussians' device (the CUDA path). Boxes are padded by one cell: the CUDA
    forward tests every cell of a tile exactly, so the lists only have to be a superset.
    """
    dev = means.device
    origin_t, cell_t, shape_t, tile_t = (torch.tensor(v, dtype=torch.float64, device=dev)
                                         for v in (origin, cell, shape, tile))
    m = means.double()
    lo = torch.floor((m - half - origin_t) / cell_t - 1)
    hi = torch.floor((m + half - origin_t) / cell_t + 1)
    empty = ((hi < 0) | (lo > shape_t - 1)).any(dim=1)
    lo = torch.floor(lo.clamp(torch.zeros_like(shape_t), shape_t - 1) / tile_t).long()
    hi = torch.floor(hi.clamp(torch.zeros_like(shape_t), shape_t - 1) / tile_t).long()
    hi[empty] = lo[empty] - 1                                  # no tiles for boxes off the grid
    ntiles = [-(-n // t) for n, t in zip(shape, tile)]
    g, idx = _pairs_in_boxes(lo, hi, 0, means.shape[0])
    tile_id = torch.zeros_like(g)
    for a in range(len(shape)):
        tile_id = tile_id * ntiles[a] + idx[:, a]
    order = torch.argsort(tile_id, stable=True)
    counts = torch.bincount(tile_id, minlength=math.prod(ntiles))
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.long, device=dev)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr, g[order].contiguous()


# ----------------------------------------------------------------------------------------------
# Registered ops
# ----------------------------------------------------------------------------------------------
STRIP_2D = 8  # rows per CPU forward work item (all columns: a Gaussian's row runs are never cut)
TILE_3D = 8
CUDA_TILE_2D = 16         # 16 x 16 cells per CUDA block (one thread per cell)
CUDA_TILE_3D = (8, 8, 4)  # voxels per CUDA block


def _native():
    from perception.ops._native import load

    return load("gaussian_splat")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _plan2d(means, scales, rotations, opacities, x_min, y_min, resolution, nx, ny):
    """What both 2-D CPU kernels need, for the Gaussians that reach the grid in the order of the row
    their box starts in (so a strip's Gaussians, their parameters and their runs lie together in
    memory: twice as fast as the input order, whose Gaussians are scattered over the grid):
    ``order`` (indices into the inputs), ``start`` (:func:`_order_by_row`), their cell boxes,
    parameters (:func:`_params2d`) and runs per row, ``(rptr, j0, j1, e, r)`` (:func:`_runs2d`)."""
    lims = np.array([x_min, y_min, resolution], np.float64)
    m, sc, rot, op = _np(means), _np(scales), _np(rotations), _np(opacities)
    box = _boxes2d(m, sc, rot, lims, nx, ny)
    order, start = _order_by_row(box, nx)
    box = box[order]
    prm = _params2d(m[order], sc[order], rot[order], op[order], resolution)
    rptr = _row_ptr(box)
    return order, start, box, prm, (rptr, *_runs2d(prm, box, lims, rptr))


@torch.library.custom_op("perception::gaussian_splat_bev", mutates_args=())
def _splat_bev_op(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor, opacities: torch.Tensor,
                  features: torch.Tensor, x_min: float, y_min: float, resolution: float, nx: int,
                  ny: int) -> torch.Tensor:
    """means [G, 2], scales [G, 2], rotations [G], opacities [G], features [G, C] → [C, nx, ny]."""
    G, C = features.shape
    if features.is_cuda:
        c, s = torch.cos(rotations.double()), torch.sin(rotations.double())
        sc = scales.double()
        half = CUTOFF * torch.stack([torch.hypot(c * sc[:, 0], s * sc[:, 1]),
                                     torch.hypot(s * sc[:, 0], c * sc[:, 1])], 1)
        ptr, lst = _tile_lists_torch(means, half, (x_min, y_min), (resolution, resolution), (nx, ny),
                                     (CUDA_TILE_2D, CUDA_TILE_2D))
        return _native().splat2d_forward(means, scales, rotations, opacities, features, ptr, lst,
                                         x_min, y_min, resolution, nx, ny, CUDA_TILE_2D)
    out = torch.empty(C, nx, ny, dtype=features.dtype)
    if out.numel() == 0:
        return out
    if G == 0:
        return out.zero_()
    order, start, box, prm, runs = _plan2d(means, scales, rotations, opacities, x_min, y_min, resolution, nx, ny)
    glo, ghi, work = _strip_ranges(box, start, STRIP_2D, ny)
    bptr, items = _balance(work, min(numba.get_num_threads(), len(work)))
    _splat2d_fwd(prm, _take_rows(_np(features), order), box, glo, ghi, bptr, items, STRIP_2D, runs, out.numpy())
    return out


@_splat_bev_op.register_fake
def _(means, scales, rotations, opacities, features, x_min, y_min, resolution, nx, ny):
    return features.new_empty(features.shape[1], nx, ny)


@torch.library.custom_op("perception::gaussian_splat_bev_backward", mutates_args=())
def _splat_bev_backward_op(grad_out: torch.Tensor, means: torch.Tensor, scales: torch.Tensor,
                           rotations: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
                           x_min: float, y_min: float, resolution: float, nx: int, ny: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_out [C, nx, ny] → grads of (means, scales, rotations, opacities, features)."""
    if features.is_cuda:
        return tuple(_native().splat2d_backward(grad_out.contiguous(), means, scales, rotations, opacities,
                                                features, x_min, y_min, resolution, nx, ny))
    grads = [torch.zeros_like(t) for t in (means, scales, rotations, opacities, features)]
    G, C = features.shape
    if G == 0 or grad_out.numel() == 0:
        return tuple(grads)
    order, _, box, prm, runs = _plan2d(means, scales, rotations, opacities, x_min, y_min, resolution, nx, ny)
    gout = grad_out.permute(1, 2, 0).contiguous()                   # [nx, ny, C]
    sorted_grads = [torch.empty((order.shape[0],) + t.shape[1:], dtype=t.dtype) for t in grads]
    _splat2d_bwd(gout.numpy(), prm, _take_rows(_np(features), order), np.array([x_min, y_min, resolution]), box,
                 runs, *(t.numpy() for t in sorted_grads))
    idx = torch.from_numpy(order)
    for t, st in zip(grads, sorted_grads):
        t[idx] = st
    return tuple(grads)


@_splat_bev_backward_op.register_fake
def _(grad_out, means, scales, rotations, opacities, features, x_min, y_min, resolution, nx, ny):
    return tuple(torch.empty_like(t) for t in (means, scales, rotations, opacities, features))


def _splat_bev_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.grid_args = inputs[5:]


def _splat_bev_backward(ctx, grad):
    grads = torch.ops.perception.gaussian_splat_bev_backward(grad, *ctx.saved_tensors, *ctx.grid_args)
    return tuple(grads) + (None,) * 5


_splat_bev_op.register_autograd(_splat_bev_backward, setup_context=_splat_bev_setup)


@torch.library.custom_op("perception::gaussian_splat_volume", mutates_args=())
def _splat_volume_op(means: torch.Tensor, scales: torch.Tensor, rotmats: torch.Tensor, opacities: torch.Tensor,
                     features: torch.Tensor, origin: list[float], voxel_size: list[float],
                     shape: list[int]) -> torch.Tensor:
    """means [G, 3], scales [G, 3], rotmats [G, 3, 3], opacities [G], features [G, C] → [C, X, Y, Z]."""
    G, C = features.shape
    X, Y, Z = shape
    if features.is_cuda:
        half = CUTOFF * torch.sqrt(((rotmats.double() * scales.double()[:, None, :]) ** 2).sum(2))
        ptr, lst = _tile_lists_torch(means, half, origin, voxel_size, shape, CUDA_TILE_3D)
        return _native().splat3d_forward(means, scales, rotmats, opacities, features, ptr, lst,
                                         list(origin), list(voxel_size), list(shape), list(CUDA_TILE_3D))
    out = torch.empty(C, X, Y, Z, dtype=features.dtype)
    if out.numel() == 0:
        return out
    if G == 0:
        return out.zero_()
    lims = np.array(list(origin) + list(voxel_size), np.float64)
    rot = _np(rotmats).astype(np.float64)
    box = _boxes3d(_np(means), _np(scales), rot, lims, X, Y, Z)
    nt = np.array([-(-n // TILE_3D) for n in shape])
    ptr, lst = _tile_lists(box, np.full(3, TILE_3D), nt)
    _splat3d_fwd(_np(means), _np(scales), rot, _np(opacities), _np(features), lims, box, ptr, lst, TILE_3D,
                 out.numpy())
    return out


@_splat_volume_op.register_fake
def _(means, scales, rotmats, opacities, features, origin, voxel_size, shape):
    return features.new_empty(features.shape[1], *shape)


@torch.library.custom_op("perception::gaussian_splat_volume_backward", mutates_args=())
def _splat_volume_backward_op(grad_out: torch.Tensor, means: torch.Tensor, scales: torch.Tensor,
                              rotmats: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
                              origin: list[float], voxel_size: list[float], shape: list[int]
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_out [C, X, Y, Z] → grads of (means, scales, rotmats, opacities, features)."""
    if features.is_cuda:
        return tuple(_native().splat3d_backward(grad_out.contiguous(), means, scales, rotmats, opacities, features,
                                                list(origin), list(voxel_size), list(shape)))
    grads = [torch.zeros_like(t) for t in (means, scales, rotmats, opacities, features)]
    G, C = features.shape
    if G == 0 or grad_out.numel() == 0:
        return tuple(grads)
    lims = np.array(list(origin) + list(voxel_size), np.float64)
    rot = _np(rotmats).astype(np.float64)
    box = _boxes3d(_np(means), _np(scales), rot, lims, *shape)
    gout = grad_out.permute(1, 2, 3, 0).contiguous()                 # [X, Y, Z, C]
    g_rot = np.zeros((G, 3, 3), np.float64)
    _splat3d_bwd(gout.numpy(), _np(means), _np(scales), rot, _np(opacities), _np(features), lims, box,
                 grads[0].numpy(), grads[1].numpy(), g_rot, grads[3].numpy(), grads[4].numpy())
    grads[2] = torch.from_numpy(g_rot).to(rotmats.dtype)
    return tuple(grads)


@_splat_volume_backward_op.register_fake
def _(grad_out, means, scales, rotmats, opacities, features, origin, voxel_size, shape):
    return tuple(torch.empty_like(t) for t in (means, scales, rotmats, opacities, features))


def _splat_volume_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.grid_args = inputs[5:]


def _splat_volume_backward(ctx, grad):
    grads = torch.ops.perception.gaussian_splat_volume_backward(grad, *ctx.saved_tensors, *ctx.grid_args)
    return tuple(grads) + (None,) * 3


_splat_volume_op.register_autograd(_splat_volume_backward, setup_context=_splat_volume_setup)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def _prepare(means, scales, rotations, opacities, features, A: int, rot_last):
    """Validate shapes and values, promote to one float dtype, drop non-finite Gaussians.

    Returns the (possibly subset) tensors and the number dropped.
    """
    check_shape("means", means, 2, A)
    G = means.shape[0]
    check_shape("scales", scales, 2, A)
    if rot_last is None:
        check_shape("rotations", rotations, 1)
    else:
        check_shape("rotations", rotations, 2, rot_last)
    check_shape("opacities", opacities, 1)
    check_shape("features", features, 2)
    for name, t in (("scales", scales), ("rotations", rotations), ("opacities", opacities), ("features", features)):
        if t.shape[0] != G:
            raise ValueError(f"{name}: expected {G} Gaussians (means has {G}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if not means.is_floating_point():
        raise ValueError(f"means: expected a floating-point tensor, got {means.dtype}")
    dtype = features.dtype
    for t in (means, scales, rotations, opacities):
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    ts = [t.to(dtype) for t in (means, scales, rotations, opacities, features)]
    means, scales, rotations, opacities, features = ts
    with torch.no_grad():
        finite = (torch.isfinite(means).all(1) & torch.isfinite(scales).all(1) & torch.isfinite(opacities)
                  & (torch.isfinite(rotations) if rotations.dim() == 1 else torch.isfinite(rotations).all(1)))
        n_bad = int((~finite).sum())
        sc, op = scales[finite], opacities[finite]
        if sc.numel() and not bool((sc > 0).all()):
            raise ValueError(f"scales: standard deviations must be > 0, got min {float(sc.min())}")
        if op.numel() and not bool(((op >= 0) & (op <= 1)).all()):
            raise ValueError(f"opacities: must lie in [0, 1], got range [{float(op.min())}, {float(op.max())}]")
        if rot_last == 4:
            qn = rotations[finite].norm(dim=1)
            if qn.numel() and not bool((qn > 0).all()):
                raise ValueError("rotations: quaternions must be non-zero (they are normalised here)")
    if n_bad:
        keep = torch.nonzero(finite).squeeze(1)
        ts = [t[keep] for t in ts]
    return ts, n_bad


def gaussian_splat_bev(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                       opacities: torch.Tensor, features: torch.Tensor, grid: BevGrid, *,
                       backend: str = "auto", return_count: bool = False):
    """Splat 2-D Gaussians' features into BEV → ``[C, nx, ny]``.

    Args:
        means: ``[G, 2]`` ego-frame xy (m). scales: ``[G, 2]`` standard deviations along the
            Gaussian's own axes (m, > 0). rotations: ``[G]`` angle of its first axis from +x (rad).
        opacities: ``[G]`` in [0, 1]. features: ``[G, C]``.
        grid: the :class:`BevGrid`. backend: ``"auto"`` | ``"torch"`` | ``"cpu"`` | ``"cuda"``.
        return_count: return ``(bev, n_nonfinite)``, the Gaussians left out for non-finite parameters.
    """
    if not isinstance(grid, BevGrid):
        raise ValueError(f"grid: expected a BevGrid, got {type(grid).__name__}")
    backend = resolve(backend, means, scales, rotations, opacities, features)
    (means, scales, rotations, opacities, features), n_bad = _prepare(
        means, scales, rotations, opacities, features, 2, None)
    nx, ny = grid.shape
    if backend == "torch":
        out = gaussian_splat_bev_reference(means, scales, rotations, opacities, features, grid)
    else:
        out = torch.ops.perception.gaussian_splat_bev(
            means.contiguous(), scales.contiguous(), rotations.contiguous(), opacities.contiguous(),
            features.contiguous(), float(grid.x_min), float(grid.y_min), float(grid.resolution), nx, ny)
    return (out, n_bad) if return_count else out


def gaussian_splat_volume(means: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor,
                          opacities: torch.Tensor, features: torch.Tensor, grid: VoxelGrid, *,
                          backend: str = "auto", return_count: bool = False):
    """Splat 3-D Gaussians' features into a voxel volume → ``[C, X, Y, Z]``.

    Args:
        means: ``[G, 3]`` ego-frame xyz (m). scales: ``[G, 3]`` standard deviations (m, > 0).
        rotations: ``[G, 4]`` quaternions ``(w, x, y, z)`` (normalised here).
        opacities: ``[G]`` in [0, 1]. features: ``[G, C]``.
        grid: the :class:`VoxelGrid`. backend: ``"auto"`` | ``"torch"`` | ``"cpu"`` | ``"cuda"``.
        return_count: return ``(volume, n_nonfinite)``.
    """
    if not isinstance(grid, VoxelGrid):
        raise ValueError(f"grid: expected a VoxelGrid, got {type(grid).__name__}")
    backend = resolve(backend, means, scales, rotations, opacities, features)
    (means, scales, rotations, opacities, features), n_bad = _prepare(
        means, scales, rotations, opacities, features, 3, 4)
    if backend == "torch":
        out = gaussian_splat_volume_reference(means, scales, rotations, opacities, features, grid)
    else:
        rotm = quaternion_to_rotmat(rotations)   # differentiable: the op's grad flows back to the quaternions
        out = torch.ops.perception.gaussian_splat_volume(
            means.contiguous(), scales.contiguous(), rotm.contiguous(), opacities.contiguous(),
            features.contiguous(), [float(v) for v in grid.origin], [float(v) for v in grid.voxel_size],
            list(grid.shape))
    return (out, n_bad) if return_count else out
