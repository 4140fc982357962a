"""Dynamic scatter: pool per-point features into their voxels (mean, max or sum), with autograd.

The pooling step of dynamic voxelization (Zhou et al., "End-to-End Multi-View Fusion for 3D Object
Detection in LiDAR Point Clouds", CoRL 2019), used by dynamic VoxelNet / PointPillars encoders
(mmcv's ``DynamicScatter``; Lang et al., "PointPillars", CVPR 2019 for the pillar case).

``dynamic_scatter(feats [N, C], coors [N, 3]) -> (voxel_feats [M, C], voxel_coors [M, 3] int32,
point2voxel [N] int64)``:

- a row of ``coors`` with any negative entry (``-1`` rows of :func:`dynamic_voxelize`: non-finite or
  out-of-range points) is ignored and gets ``point2voxel == -1``; count them with
  ``(point2voxel < 0).sum()``;
- **voxel order**: the voxels are sorted lexicographically by ``(z, y, x)``, i.e. by the linear key
  ``(z * Y + y) * X + x`` (``Y``, ``X`` = max coordinate + 1) — the order of ``torch.unique`` on that
  key, independent of the input order and of the thread count;
- ``reduce="mean"``: average (gradient ``grad / count`` to every point); ``"sum"``: sum (gradient to
  every point); ``"max"``: per-channel maximum (gradient to the arg-max point; on ties the first point in
  input order). NaN features propagate (a channel with a NaN is NaN and passes no gradient under max).
  On CPU, sums accumulate in input order in the features' dtype (deterministic); on CUDA they are
  float atomics (the last bits depend on the schedule).

Backends: ``"torch"`` (:func:`dynamic_scatter_reference`, plain PyTorch autograd), ``"cpu"`` (numba, the
default on CPU), ``"cuda"`` (``ops/dynamic_scatter/``: torch's sorted ``unique`` on the keys, then
atomic reductions). The backward is the registered op ``perception::dynamic_scatter_backward``.

CPU kernel: the valid points' keys are packed with their index into one 64-bit word
(``key << 32 | index``) and LSD-radix sorted on the key bits only (<= 11-bit digits, 3 passes for a
1504 x 1504 x 54 grid; each pass parallel over thread chunks and stable, so the points of a voxel stay
in input order); runs of one key are the voxels (found branch-free); the reduction is parallel over
voxels, each output row written once (no atomics), with the feature rows - a random gather in
sorted order - software-prefetched a few points ahead, which more than halves its time. Keys wider
than 31 bits are first replaced by their rank (``np.unique``). Scratch arrays are kept per thread.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from ._backend import check_shape, resolve
from .voxelize import _prefetch, _workspace

__all__ = ["dynamic_scatter", "dynamic_scatter_reference", "REDUCES"]

REDUCES = ("mean", "max", "sum")
_RID = {"mean": 0, "max": 1, "sum": 2}


def _check(feats: torch.Tensor, coors: torch.Tensor, reduce: str) -> None:
    check_shape("feats", feats, 2)
    check_shape("coors", coors, 2, 3)
    if not feats.is_floating_point():
        raise ValueError(f"feats: expected a floating-point tensor, got {feats.dtype}")
    if coors.is_floating_point() or coors.dtype == torch.bool or coors.is_complex():
        raise ValueError(f"coors: expected an integer tensor, got {coors.dtype}")
    if coors.shape[0] != feats.shape[0]:
        raise ValueError(f"coors: expected {feats.shape[0]} rows (one per row of feats), got {coors.shape[0]}")
    if coors.device != feats.device:
        raise ValueError(f"coors: on {coors.device}, feats on {feats.device}; put both on one device")
    if reduce not in REDUCES:
        raise ValueError(f"reduce: expected one of {REDUCES}, got {reduce!r}")


def _dims(c: torch.Tensor) -> tuple[int, int, int]:
    """Y, X extents (max + 1) of valid coords ``c [V, 3]`` (int64), and the key count; checks overflow."""
    mx = c.amax(0).tolist()
    Z, Y, X = mx[0] + 1, mx[1] + 1, mx[2] + 1
    if Z * Y * X >= 2**62:
        raise ValueError(f"coors: coordinates up to {mx} do not fit a 64-bit linear key")
    return Y, X, Z * Y * X


# ------------------------------------------------------------------------------------------------
# torch reference
# ------------------------------------------------------------------------------------------------
def dynamic_scatter_reference(feats: torch.Tensor, coors: torch.Tensor, reduce: str = "mean"):
    """Plain-PyTorch dynamic scatter (differentiable through torch's own autograd): the oracle."""
    _check(feats, coors, reduce)
    n, C = feats.shape
    valid = (coors >= 0).all(1)
    idx = valid.nonzero()[:, 0]
    p2v = torch.full((n,), -1, dtype=torch.int64, device=feats.device)
    if idx.numel() == 0:
        return feats.new_zeros(0, C), coors.new_zeros(0, 3, dtype=torch.int32), p2v
    c = coors[idx].long()
    Y, X, _ = _dims(c)
    key = (c[:, 0] * Y + c[:, 1]) * X + c[:, 2]
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    M = uniq.numel()
    f = feats[idx]
    if reduce in ("sum", "mean"):
        out = f.new_zeros(M, C).index_add(0, inv, f)
        if reduce == "mean":
            out = out / torch.bincount(inv, minlength=M).to(f.dtype)[:, None]
    else:  # max, gradient to the first arg-max point: pick the winner's value with gather
        inv_c = inv[:, None].expand(-1, C)
        fd = f.detach()
        amax = fd.new_full((M, C), -torch.inf).scatter_reduce(0, inv_c, fd, "amax")
        V = idx.numel()
        pos = torch.arange(V, device=f.device)[:, None].expand(-1, C)
        cand = torch.where(fd == amax[inv], pos, torch.full_like(pos, V))
        first = torch.full((M, C), V, dtype=torch.long, device=f.device).scatter_reduce(0, inv_c, cand, "amin")
        out = torch.where(first < V, f.gather(0, first.clamp(max=V - 1)), amax)  # no match only for NaN
    vcoors = torch.stack([uniq // (Y * X), (uniq // X) % Y, uniq % X], 1).to(torch.int32)
    p2v[idx] = inv
    return out, vcoors, p2v


# ------------------------------------------------------------------------------------------------
# numba CPU kernels
# ------------------------------------------------------------------------------------------------
# As in voxelize.py: each parallel kernel is a ``prange`` over thread chunks calling a serial worker
# on sliced views (loops from 0, so numba's negative-index wrapping folds away and loops vectorise).
_LOW = np.int64(0xFFFFFFFF)
_PF = 16  # prefetch distance (points) for the feature-row gathers


@numba.njit(cache=True)
def _extent_chunk(coors, out):
    mz = -1
    my = -1
    mx = -1
    nv = 0
    for i in range(coors.shape[0]):
        z = coors[i, 0]
        y = coors[i, 1]
        x = coors[i, 2]
        if z >= 0 and y >= 0 and x >= 0:
            nv += 1
            mz = max(mz, z)
            my = max(my, y)
            mx = max(mx, x)
    out[0] = mz
    out[1] = my
    out[2] = mx
    out[3] = nv


@numba.njit(parallel=True, cache=True)
def _extent(coors, stats):
    """Per chunk of rows: max z, y, x over valid rows and the valid count, into ``stats [T, 4]``."""
    n = coors.shape[0]
    nchunks = stats.shape[0]
    csz = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        a = min(n, c * csz)
        _extent_chunk(coors[a:min(n, a + csz)], stats[c])


@numba.njit(cache=True)
def _pack_chunk(coors, base, Y, X, packed, p2v):
    j = 0
    for i in range(coors.shape[0]):
        z = np.int64(coors[i, 0])
        y = np.int64(coors[i, 1])
        x = np.int64(coors[i, 2])
        if z >= 0 and y >= 0 and x >= 0:
            packed[j] = (((z * Y + y) * X + x) << 32) | (base + i)
            j += 1
        else:
            p2v[i] = -1


@numba.njit(parallel=True, cache=True)
def _pack(coors, Y, X, coff, packed, p2v):
    """Valid rows -> ``packed[j] = key << 32 | i`` (chunk ``c`` from ``coff[c]`` on, input order);
    ``p2v[i] = -1`` for the others."""
    n = coors.shape[0]
    nchunks = coff.shape[0] - 1
    csz = (n + nchunks - 1) // nchunks
    for c in prange(nchunks):
        a = min(n, c * csz)
        b = min(n, a + csz)
        _pack_chunk(coors[a:b], a, Y, X, packed[coff[c]:coff[c + 1]], p2v[a:b])


@numba.njit(cache=True)
def _digit_hist(src, shift, mask, h):
    for j in range(src.shape[0]):
        h[(src[j] >> shift) & mask] += 1


@numba.njit(cache=True)
def _digit_scatter(src, shift, mask, off, dst):
    for j in range(src.shape[0]):
        w = src[j]
        d = (w >> shift) & mask
        dst[off[d]] = w
        off[d] += 1


@numba.njit(parallel=True, cache=True)
def _radix_sort(a, b, kbits, nchunks):
    """Stable LSD radix sort of the packed words ``a`` on bits ``[32, 32 + kbits)`` (the key; the low
    32 bits, the point index, ride along), <= 11-bit digits, each pass parallel over chunks (per-chunk
    histograms, then per-chunk scatter offsets). ``b`` is scratch; returns the array holding the result."""
    n = a.shape[0]
    passes = max(1, (kbits + 10) // 11)
    width = (kbits + passes - 1) // passes
    B = 1 << width
    mask = np.int64(B - 1)
    csz = (n + nchunks - 1) // nchunks
    src = a
    dst = b
    hist = np.zeros((nchunks, B), np.int64)
    for p in range(passes):
        shift = 32 + p * width
        hist[:] = 0
        for c in prange(nchunks):
            lo = min(n, c * csz)
            _digit_hist(src[lo:min(n, lo + csz)], shift, mask, hist[c])
        s = 0
        for d in range(B):
            for c in range(nchunks):
                t = hist[c, d]
                hist[c, d] = s
                s += t
        for c in prange(nchunks):
            lo = min(n, c * csz)
            _digit_scatter(src[lo:min(n, lo + csz)], shift, mask, hist[c], dst)
        src, dst = dst, src
    return src


@numba.njit(cache=True)
def _count_runs(s, prev):
    cnt = 0
    for j in range(s.shape[0]):
        k = s[j] >> 32
        cnt += k != prev
        prev = k
    return cnt


@numba.njit(cache=True)
def _mark_runs(s, base, prev, v, coors, starts, vcoors, p2v):
    """Branch-free: ``v`` advances at each new key; the voxel's coords are any of its points' coords."""
    cur = base
    own = False  # has a run started in this chunk yet? (the first one may continue the last chunk's)
    for j in range(s.shape[0]):
        if j + _PF < s.shape[0]:
            ip = s[j + _PF] & _LOW
            _prefetch(coors, ip, 0)
            _prefetch(p2v, ip, 0)
        w = s[j]
        k = w >> 32
        i = w & _LOW
        new = k != prev
        v += new
        own = own or new
        cur = base + j if new else cur
        if own:
            starts[v] = cur
        vcoors[v, 0] = coors[i, 0]
        vcoors[v, 1] = coors[i, 1]
        vcoors[v, 2] = coors[i, 2]
        p2v[i] = v
        prev = k


@numba.njit(parallel=True, cache=True)
def _runs(sidx, nchunks, coors, starts, vcoors, p2v):
    """Voxels = runs of one key in the sorted words: ``starts [M + 1]``, ``vcoors [M, 3]``, ``p2v``. Returns M."""
    V = sidx.shape[0]
    csz = (V + nchunks - 1) // nchunks
    cc = np.zeros(nchunks + 1, np.int64)
    for c in prange(nchunks):
        a = min(V, c * csz)
        prev = (sidx[a - 1] >> 32) if a > 0 else np.int64(-1)
        cc[c + 1] = _count_runs(sidx[a:min(V, a + csz)], prev)
    for c in range(nchunks):
        cc[c + 1] += cc[c]
    for c in prange(nchunks):
        a = min(V, c * csz)
        prev = (sidx[a - 1] >> 32) if a > 0 else np.int64(-1)
        _mark_runs(sidx[a:min(V, a + csz)], a, prev, cc[c] - 1, coors, starts, vcoors, p2v)
    M = cc[nchunks]
    starts[M] = V
    return M


@numba.njit(cache=True, inline="always")
def _prefetch_row(feats, sidx, j, jend, rowbytes):
    if j < jend:
        ip = sidx[j] & _LOW
        for o in range(0, rowbytes, 64):
            _prefetch(feats, ip, o)


@numba.njit(cache=True)
def _reduce_chunk(feats, sidx, starts, rid, out, counts):
    """Voxels ``[0, len(out))`` of a chunk (``starts`` has one more entry): each output row written once,
    points in input order; feature rows prefetched ``_PF`` points ahead (they are a random gather)."""
    C = out.shape[1]
    rowbytes = C * feats.itemsize
    jend = starts[out.shape[0]]
    for v in range(out.shape[0]):
        a = starts[v]
        b = starts[v + 1]
        counts[v] = b - a
        orow = out[v]
        _prefetch_row(feats, sidx, a + _PF, jend, rowbytes)
        frow = feats[sidx[a] & _LOW]
        for k in range(C):
            orow[k] = frow[k]
        for j in range(a + 1, b):
            _prefetch_row(feats, sidx, j + _PF, jend, rowbytes)
            frow = feats[sidx[j] & _LOW]
            if rid == 1:
                for k in range(C):
                    x = frow[k]
                    if x > orow[k] or (x != x):  # NaN wins and stays (NaN > y is False)
                        orow[k] = x if orow[k] == orow[k] else orow[k]
            else:
                for k in range(C):
                    orow[k] += frow[k]
        if rid == 0:
            cnt = b - a
            for k in range(C):
                orow[k] = orow[k] / cnt


@numba.njit(parallel=True, cache=True)
def _reduce(feats, sidx, starts, rid, nchunks, out, counts):
    """Parallel over chunks of voxels: ``out[v] = reduce(feats[points of v])``, ``counts[v]``."""
    M = out.shape[0]
    csz = (M + nchunks - 1) // nchunks
    for c in prange(nchunks):
        a = min(M, c * csz)
        b = min(M, a + csz)
        _reduce_chunk(feats, sidx, starts[a:b + 1], rid, out[a:b], counts[a:b])


@numba.njit(cache=True)
def _backward_sum_chunk(grad, p2v, counts, mean, gfeats):
    C = gfeats.shape[1]
    for i in range(gfeats.shape[0]):
        v = p2v[i]
        g = gfeats[i]
        if v < 0:
            for k in range(C):
                g[k] = 0
        elif mean:
            src = grad[v]
            cnt = counts[v]
            for k in range(C):
                g[k] = src[k] / cnt
        else:
            src = grad[v]
            for k in range(C):
                g[k] = src[k]


@numba.njit(parallel=True, cache=True)
def _backward_sum(grad, p2v, counts, mean, nchunks, gfeats):
    N = gfeats.shape[0]
    csz = (N + nchunks - 1) // nchunks
    for c in prange(nchunks):
        a = min(N, c * csz)
        b = min(N, a + csz)
        _backward_sum_chunk(grad, p2v[a:b], counts, mean, gfeats[a:b])


@numba.njit(cache=True)
def _backward_max_part(grad, feats, out, p2v, vlo, vhi, done, gfeats):
    C = feats.shape[1]
    for i in range(feats.shape[0]):
        v = p2v[i]
        if v < vlo or v >= vhi:
            continue
        f = feats[i]
        o = out[v]
        d = done[v]
        for k in range(C):
            if d[k] == 0 and f[k] == o[k]:
                gfeats[i, k] = grad[v, k]
                d[k] = 1


@numba.njit(parallel=True, cache=True)
def _backward_max(grad, feats, out, p2v, nparts, done, gfeats):
    """Gradient of max to the first point (input order) equal to its voxel's max. ``gfeats`` and
    ``done [M, C]`` zeroed; thread ``t`` owns the voxels ``[t M / T, (t + 1) M / T)``, scanning all points."""
    M = out.shape[0]
    vsz = (M + nparts - 1) // nparts
    for t in prange(nparts):
        _backward_max_part(grad, feats, out, p2v, t * vsz, min(M, (t + 1) * vsz), done, gfeats)


def _nthreads() -> int:
    return max(1, numba.get_num_threads())


def _scatter_cpu(feats: torch.Tensor, coors: torch.Tensor, rid: int):
    n, C = feats.shape
    T = _nthreads()
    co = coors.numpy()
    p2v = torch.empty((n,), dtype=torch.int64)
    p2v_np = p2v.numpy()
    stats = np.zeros((T, 4), np.int64)
    if n:
        _extent(co, stats)
    V = int(stats[:, 3].sum())
    if V == 0:
        p2v.fill_(-1)
        return (feats.new_zeros(0, C), torch.zeros(0, 3, dtype=torch.int32), p2v,
                torch.zeros(0, dtype=torch.int32))
    Z, Y, X = (int(stats[:, j].max()) + 1 for j in range(3))
    K = Z * Y * X
    if K >= 2**62:
        raise ValueError(f"coors: coordinates up to {(Z - 1, Y - 1, X - 1)} do not fit a 64-bit linear key")
    coff = np.zeros(T + 1, np.int64)
    np.cumsum(stats[:, 3], out=coff[1:])  # _extent and _pack chunk the rows alike
    ws = _workspace
    packed = ws.get("sc_packed", (V,), np.int64)
    if K <= 2**31:
        _pack(co, Y, X, coff, packed, p2v_np)
        kbits = max(1, int(K - 1).bit_length())
    else:  # huge grids: replace keys by their rank (np.unique sorts; rare), then the same path
        valid = (co >= 0).all(1)
        c64 = co[valid].astype(np.int64)
        _, rank = np.unique((c64[:, 0] * Y + c64[:, 1]) * X + c64[:, 2], return_inverse=True)
        packed[:] = (rank.astype(np.int64) << 32) | np.flatnonzero(valid)
        p2v_np[~valid] = -1
        kbits = max(1, int(rank.max()).bit_length())
    sidx = _radix_sort(packed, ws.get("sc_scratch", (V,), np.int64), kbits, T)
    starts = ws.get("sc_starts", (V + 1,), np.int64)
    vco = ws.get("sc_vco", (V, 3), np.int32)
    M = int(_runs(sidx, T, co, starts, vco, p2v_np))
    out = torch.empty((M, C), dtype=feats.dtype)
    counts = torch.empty((M,), dtype=torch.int32)
    _reduce(feats.numpy(), sidx, starts, rid, T, out.numpy(), counts.numpy())
    return out, torch.from_numpy(vco[:M].copy()), p2v, counts


# ------------------------------------------------------------------------------------------------
# registered ops
# ------------------------------------------------------------------------------------------------
def _prep(feats: torch.Tensor, coors: torch.Tensor):
    f = feats.detach().contiguous()
    c = coors.detach().to(torch.int32).contiguous()
    return f, c


@torch.library.custom_op("perception::dynamic_scatter", mutates_args=())
def _scatter_op(feats: torch.Tensor, coors: torch.Tensor, reduce: str
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(voxel_feats [M, C], voxel_coors [M, 3] int32, point2voxel [N] int64, voxel_counts [M] int32)."""
    f, c = _prep(feats, coors)
    if f.is_cuda:
        from ._native import load

        return tuple(load("dynamic_scatter").dynamic_scatter_forward(f, c, _RID[reduce]))  # type: ignore[return-value]
    return _scatter_cpu(f, c, _RID[reduce])


@_scatter_op.register_fake
def _(feats, coors, reduce):
    m = torch.library.get_ctx().new_dynamic_size()
    return (feats.new_empty((m, feats.shape[1])), feats.new_empty((m, 3), dtype=torch.int32),
            feats.new_empty((feats.shape[0],), dtype=torch.int64), feats.new_empty((m,), dtype=torch.int32))


@torch.library.custom_op("perception::dynamic_scatter_backward", mutates_args=())
def _scatter_backward_op(grad: torch.Tensor, feats: torch.Tensor, voxel_feats: torch.Tensor,
                         point2voxel: torch.Tensor, voxel_counts: torch.Tensor, reduce: str) -> torch.Tensor:
    """Gradient w.r.t. feats [N, C] of :func:`dynamic_scatter` given ``grad [M, C]``."""
    g = grad.contiguous()
    f = feats.contiguous()
    if g.is_cuda:
        from ._native import load

        return load("dynamic_scatter").dynamic_scatter_backward(
            g, f, voxel_feats.contiguous(), point2voxel.contiguous(), voxel_counts.contiguous(), _RID[reduce])
    N, C = f.shape
    if reduce == "max":
        gf = torch.zeros_like(f)
        if N and voxel_feats.shape[0]:
            T = _nthreads()
            done = np.zeros((voxel_feats.shape[0], C), np.uint8)
            _backward_max(g.numpy(), f.numpy(), voxel_feats.contiguous().numpy(), point2voxel.contiguous().numpy(),
                          T, done, gf.numpy())
        return gf
    gf = torch.empty_like(f)
    if N:
        _backward_sum(g.numpy(), point2voxel.contiguous().numpy(), voxel_counts.contiguous().numpy(),
                      reduce == "mean", _nthreads(), gf.numpy())
    return gf


@_scatter_backward_op.register_fake
def _(grad, feats, voxel_feats, point2voxel, voxel_counts, reduce):
    return torch.empty_like(feats)


def _setup_context(ctx, inputs, output):
    feats, _, reduce = inputs
    out, _, p2v, counts = output
    ctx.reduce = reduce
    ctx.save_for_backward(feats if reduce == "max" else None, out if reduce == "max" else None, p2v, counts)


def _backward(ctx, grad_out, *_):
    feats, out, p2v, counts = ctx.saved_tensors
    if feats is None:  # sum / mean need neither the features nor the output
        feats = grad_out.new_empty((p2v.shape[0], grad_out.shape[1]))
        out = grad_out
    return _scatter_backward_op(grad_out, feats, out, p2v, counts, ctx.reduce), None, None


_scatter_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# public function
# ------------------------------------------------------------------------------------------------
def dynamic_scatter(feats: torch.Tensor, coors: torch.Tensor, reduce: str = "mean", backend: str = "auto"):
    """Pool ``feats [N, C]`` into the voxels ``coors [N, 3]`` (``(z, y, x)``, rows with a negative entry ignored).

    Returns ``(voxel_feats [M, C], voxel_coors [M, 3] int32, point2voxel [N] int64)``, voxels sorted by
    ``(z, y, x)``; ``point2voxel[i] = -1`` for ignored points. Differentiable w.r.t. ``feats``.
    """
    _check(feats, coors, reduce)
    b = resolve(backend, feats, coors)
    if b == "torch":
        return dynamic_scatter_reference(feats, coors, reduce)
    work = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
    out, vco, p2v, _ = _scatter_op(work, coors, reduce)
    return out.to(feats.dtype), vco, p2v
