"""Camera-to-BEV pooling: sum every frustum point's depth-weighted feature into its BEV cell.

Lift-Splat-Shoot (Philion & Fidler, "Lift, Splat, Shoot: Encoding Images from Arbitrary Camera Rigs
by Implicitly Unprojecting to 3D", ECCV 2020) lifts each image pixel to ``D`` depth bins weighted by a
per-pixel depth distribution and "splats" the frustum into BEV; BEVFusion (Liu et al., "BEVFusion:
Multi-Task Multi-Sensor Fusion with Unified Bird's-Eye View Representation", ICRA 2023) made the
pooling fast by precomputing, once per calibration, which BEV cell every frustum point falls in,
sorting the points by cell and pooling each cell's run ("interval") in one work item.

    plan = bev_pool_prepare(geom, grid, z_range)      # once per calibration
    bev = bev_pool(feats, depth, plan)                 # [B, C, nx, ny], every frame
    bev = bev_pool(feats, depth, geom, grid, z_range)  # convenience: prepares on the fly

``bev[b, :, i, j] = sum over frustum points p of batch b in cell (i, j) of feat(p) * depth[p]``,
with ``feat(p)`` the feature of the point itself (``feats [B, N, D, H, W, C]``) or of its pixel
(``feats [B, N, H, W, C]``, shared by the ``D`` bins: the depth outer product is never materialised,
as in BEVDepth/BEVPoolv2). Cells follow :class:`~perception.geometry.grid.BevGrid` (``i`` along x,
``j`` along y, half-open ``[min, max)``); points with ``z`` outside ``[z_min, z_max)`` or outside the
grid are dropped, and so are points with a non-finite coordinate: both are counted in the plan
(``plan.n_outside``, ``plan.n_nonfinite``; ``return_plan=True`` hands back the plan made on the fly).
Differentiable w.r.t. ``feats`` and ``depth``; ``geom`` is not differentiated.

Backends: ``"torch"`` (:func:`bev_pool_reference`, ``index_add_``), ``"cpu"`` (numba: one work item
per run of cells, each cell's points accumulated over ``C`` channels; the backward is parallel over
features, no races), ``"cuda"`` (``ops/bev_pool/``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numba
import numpy as np
import torch

from perception.geometry.grid import BevGrid
from perception.ops._backend import check_shape, resolve

__all__ = ["BevPoolPlan", "bev_pool", "bev_pool_prepare", "bev_pool_reference"]


# ----------------------------------------------------------------------------------------------
# The plan: which cell every frustum point pools into, sorted by cell
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BevPoolPlan:
    """Point → BEV cell assignment for one frustum geometry, sorted by cell (BEVFusion's intervals).

    Frustum point ``p`` is the flat index into ``[B, N, D, H, W]``; cell ids are flat indices into
    ``[B, nx, ny]`` (``b * nx * ny + i * ny + j``).
    """

    point_idx: torch.Tensor         # [K] int64: kept frustum points, sorted by (cell, p)
    point_pixel: torch.Tensor       # [K] int64: their pixels (flat into [B, N, H, W]), for per-pixel feats
    cell_ids: torch.Tensor          # [I] int64: the cell of every interval (non-empty cell), increasing
    interval_starts: torch.Tensor   # [I] int64: where each interval starts in point_idx
    interval_lengths: torch.Tensor  # [I] int64: how many points it pools
    point_cell: torch.Tensor        # [P] int64: cell of every frustum point, -1 where dropped
    frustum_shape: tuple[int, int, int, int, int]  # (B, N, D, H, W)
    bev_shape: tuple[int, int]      # (nx, ny)
    n_outside: int                  # finite points outside the grid or the z range
    n_nonfinite: int                # points with a NaN/inf coordinate

    @property
    def n_dropped(self) -> int:
        return self.n_outside + self.n_nonfinite

    @property
    def n_kept(self) -> int:
        return int(self.point_idx.numel())

    def to(self, device) -> BevPoolPlan:
        move = {k: getattr(self, k).to(device) for k in
                ("point_idx", "point_pixel", "cell_ids", "interval_starts", "interval_lengths", "point_cell")}
        return replace(self, **move)


def _check_grid(grid, z_range) -> tuple[float, float]:
    if not isinstance(grid, BevGrid):
        raise ValueError(f"grid: expected a BevGrid, got {type(grid).__name__}")
    try:
        z_min, z_max = (float(v) for v in z_range)
    except (TypeError, ValueError):
        raise ValueError(f"z_range: expected (z_min, z_max), got {z_range!r}") from None
    if not z_max > z_min:
        raise ValueError(f"z_range: need z_max > z_min, got {z_range!r}")
    return z_min, z_max


def _limits(grid: BevGrid, z_range, dtype, device=None) -> torch.Tensor:
    """``[x_min, y_min, resolution, z_min, z_max]`` in the geometry's dtype, so every backend bins alike."""
    return torch.tensor([grid.x_min, grid.y_min, grid.resolution, z_range[0], z_range[1]],
                        dtype=dtype, device=device)


def _assign_torch(geom: torch.Tensor, grid: BevGrid, z_range) -> tuple[torch.Tensor, int]:
    """``geom [B, N, D, H, W, 3]`` → (cell of every point ``[P]`` int64, -1 where dropped; #non-finite)."""
    nx, ny = grid.shape
    B = geom.shape[0]
    xyz = geom.reshape(-1, 3)
    lim = _limits(grid, z_range, xyz.dtype, xyz.device)
    finite = torch.isfinite(xyz).all(dim=1)
    fxy = torch.floor((xyz[:, :2] - lim[:2]) / lim[2])                     # [P, 2] float cell index
    z = xyz[:, 2]
    inside = (finite & (fxy[:, 0] >= 0) & (fxy[:, 0] < nx) & (fxy[:, 1] >= 0) & (fxy[:, 1] < ny)
              & (z >= lim[3]) & (z < lim[4]))
    ij = torch.where(inside[:, None], fxy, torch.zeros_like(fxy)).long()
    b = torch.arange(xyz.shape[0], device=xyz.device) // max(xyz.shape[0] // max(B, 1), 1)
    cell = torch.where(inside, b * (nx * ny) + ij[:, 0] * ny + ij[:, 1], torch.full_like(b, -1))
    return cell, int((~finite).sum())


@numba.njit(parallel=True, cache=True)
def _assign_numba(xyz, lim, nx, ny, per_batch, point_cell):  # pragma: no cover - compiled
    # lim is in xyz's dtype and fastmath is off: the same float arithmetic as _assign_torch
    nonfinite = 0
    for p in numba.prange(xyz.shape[0]):
        x = xyz[p, 0]
        y = xyz[p, 1]
        z = xyz[p, 2]
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
            point_cell[p] = -1
            nonfinite += 1
        else:
            fx = np.floor((x - lim[0]) / lim[2])
            fy = np.floor((y - lim[1]) / lim[2])
            if fx >= 0 and fx < nx and fy >= 0 and fy < ny and z >= lim[3] and z < lim[4]:
                point_cell[p] = (p // per_batch) * (nx * ny) + np.int64(fx) * ny + np.int64(fy)
            else:
                point_cell[p] = -1
    return nonfinite


@numba.njit(cache=True)
def _sort_by_cell_numba(point_cell, n_cells):  # pragma: no cover - compiled
    """Counting sort of the kept points by cell (stable: ties keep frustum order) → the intervals."""
    counts = np.zeros(n_cells, np.int64)
    for p in range(point_cell.shape[0]):
        c = point_cell[p]
        if c >= 0:
            counts[c] += 1
    n_int = 0
    total = 0
    for c in range(n_cells):
        if counts[c] > 0:
            n_int += 1
        total += counts[c]
    cell_ids = np.empty(n_int, np.int64)
    starts = np.empty(n_int, np.int64)
    lengths = np.empty(n_int, np.int64)
    fill = np.empty(n_cells, np.int64)
    k = 0
    s = 0
    for c in range(n_cells):
        fill[c] = s
        if counts[c] > 0:
            cell_ids[k] = c
            starts[k] = s
            lengths[k] = counts[c]
            k += 1
        s += counts[c]
    point_idx = np.empty(total, np.int64)
    for p in range(point_cell.shape[0]):
        c = point_cell[p]
        if c >= 0:
            point_idx[fill[c]] = p
            fill[c] += 1
    return point_idx, cell_ids, starts, lengths


def bev_pool_prepare(geom: torch.Tensor, grid: BevGrid, z_range, backend: str = "auto") -> BevPoolPlan:
    """Assign every frustum point of ``geom [B, N, D, H, W, 3]`` (ego-frame xyz) to its BEV cell.

    Points outside ``grid`` × ``[z_min, z_max)`` or with a non-finite coordinate are dropped and
    counted. The plan lives on ``geom``'s device; ``backend`` picks how it is built (``"cpu"``:
    numba counting sort; ``"torch"``/``"cuda"``: torch ops).
    """
    check_shape("geom", geom, 6, 3)
    if not geom.is_floating_point():
        raise ValueError(f"geom: expected a floating-point tensor, got {geom.dtype}")
    z_range = _check_grid(grid, z_range)
    backend = resolve(backend, geom)
    B, N, D, H, W, _ = geom.shape
    nx, ny = grid.shape
    P = B * N * D * H * W
    xyz = geom.detach()
    if backend == "cpu":
        xyz_np = xyz.reshape(-1, 3).contiguous()
        if xyz_np.dtype not in (torch.float32, torch.float64):
            xyz_np = xyz_np.float()
        point_cell = np.empty(P, np.int64)
        n_nonfinite = 0
        if P:
            lim = _limits(grid, z_range, xyz_np.dtype).numpy()
            n_nonfinite = int(_assign_numba(xyz_np.numpy(), lim, nx, ny, P // B, point_cell))
        point_idx, cell_ids, starts, lengths = _sort_by_cell_numba(point_cell, B * nx * ny)
        tensors = [torch.from_numpy(a) for a in (point_idx, cell_ids, starts, lengths, point_cell)]
    else:
        point_cell, n_nonfinite = _assign_torch(xyz, grid, z_range)
        kept = torch.nonzero(point_cell >= 0).squeeze(1)
        order = torch.argsort(point_cell[kept], stable=True)
        point_idx = kept[order]
        cell_ids, lengths = torch.unique_consecutive(point_cell[point_idx], return_counts=True)
        starts = torch.cumsum(lengths, 0) - lengths
        tensors = [point_idx, cell_ids, starts, lengths, point_cell]
    point_idx, cell_ids, starts, lengths, point_cell = tensors
    point_pixel = (point_idx // (D * H * W)) * (H * W) + point_idx % (H * W)
    return BevPoolPlan(point_idx, point_pixel, cell_ids, starts, lengths, point_cell, (B, N, D, H, W), (nx, ny),
                       n_outside=P - int(point_idx.numel()) - n_nonfinite, n_nonfinite=n_nonfinite)


# ----------------------------------------------------------------------------------------------
# Torch reference
# ----------------------------------------------------------------------------------------------
def _feature_layout(feats: torch.Tensor, depth_shape) -> tuple[torch.Tensor, int, int]:
    """``feats`` → (``[M, C]``, d_bins, hw) with feature row ``m(p) = (p // (d_bins hw)) hw + p % hw``.

    Per-point features (``[B, N, D, H, W, C]`` or ``[B*N*D*H*W, C]``): ``d_bins = hw = 1``, ``m = p``.
    Per-pixel features (``[B, N, H, W, C]`` or ``[B*N*H*W, C]``): ``d_bins = D``, ``hw = H W``.
    """
    B, N, D, H, W = depth_shape
    P, pix = B * N * D * H * W, B * N * H * W
    shape = tuple(feats.shape)
    if feats.dim() == 6 and shape[:5] == (B, N, D, H, W):
        per_pixel = False
    elif feats.dim() == 5 and shape[:4] == (B, N, H, W):
        per_pixel = True
    elif feats.dim() == 2 and shape[0] == P:
        per_pixel = False
    elif feats.dim() == 2 and shape[0] == pix:
        per_pixel = True
    else:
        raise ValueError(f"feats: expected [B, N, D, H, W, C], [B, N, H, W, C] or flattened [B*N*D*H*W, C] / "
                         f"[B*N*H*W, C] with (B, N, D, H, W) = {tuple(depth_shape)} from depth, got {shape}")
    flat = feats.reshape(pix if per_pixel else P, shape[-1])
    return (flat, D, H * W) if per_pixel else (flat, 1, 1)


def bev_pool_reference(feats: torch.Tensor, depth: torch.Tensor, geom: torch.Tensor, grid: BevGrid,
                       z_range, chunk: int = 1 << 18) -> torch.Tensor:
    """Plain-PyTorch bev_pool: ``index_add_`` of ``feat(p) * depth[p]`` into each point's cell.

    Same arguments as :func:`bev_pool` with ``geom``; returns ``[B, C, nx, ny]``. Points are taken
    ``chunk`` at a time so the lifted features never exist all at once.
    """
    check_shape("depth", depth, 5)
    check_shape("geom", geom, 6, 3)
    if tuple(geom.shape[:5]) != tuple(depth.shape):
        raise ValueError(f"geom: expected [B, N, D, H, W, 3] matching depth {tuple(depth.shape)}, "
                         f"got {tuple(geom.shape)}")
    z_range = _check_grid(grid, z_range)
    B, N, D, H, W = depth.shape
    nx, ny = grid.shape
    f, d_bins, hw = _feature_layout(feats, depth.shape)
    C = f.shape[1]
    cell, _ = _assign_torch(geom.detach(), grid, z_range)     # [P], -1 where dropped
    d = depth.reshape(-1)
    out = torch.zeros(B * nx * ny, C, dtype=torch.promote_types(f.dtype, d.dtype), device=f.device)
    for s in range(0, d.numel(), chunk):
        p = s + torch.nonzero(cell[s:s + chunk] >= 0).squeeze(1)  # kept points of this chunk
        m = (p // (d_bins * hw)) * hw + p % hw                      # their feature rows
        out = out.index_add(0, cell[p], f[m] * d[p, None])
    return out.view(B, nx, ny, C).permute(0, 3, 1, 2).contiguous()


def _bev_pool_torch_plan(f, d, plan: BevPoolPlan, d_bins: int, hw: int, chunk: int = 1 << 18):
    """The reference's ``index_add_`` driven by a prepared plan (``backend="torch"`` with a plan)."""
    B = plan.frustum_shape[0]
    nx, ny = plan.bev_shape
    out = torch.zeros(B * nx * ny, f.shape[1], dtype=f.dtype, device=f.device)
    for s in range(0, plan.point_idx.numel(), chunk):
        p = plan.point_idx[s:s + chunk]
        m = (p // (d_bins * hw)) * hw + p % hw
        out = out.index_add(0, plan.point_cell[p], f[m] * d[p, None])
    return out.view(B, nx, ny, f.shape[1]).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# numba CPU kernels
# ----------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True, fastmath=True)
def _pool_fwd_numba(feats, depth, point_idx, feat_idx, cell_ids, starts, lengths, out):  # pragma: no cover
    """``out [B, C, nx*ny]`` (every element written): each work item a run of cells with ~equal points."""
    B, C, nxy = out.shape
    n_cells = B * nxy
    n_int = cell_ids.shape[0]
    K = point_idx.shape[0]
    n_chunks = 64
    for t in numba.prange(n_chunks):
        # chunk t: intervals [i0, i1) holding points ~[t K / n, (t+1) K / n), and the cells between
        i0 = np.searchsorted(starts, t * K // n_chunks) if t > 0 else 0
        i1 = np.searchsorted(starts, (t + 1) * K // n_chunks) if t < n_chunks - 1 else n_int
        c0 = 0 if t == 0 else (cell_ids[i0] if i0 < n_int else n_cells)
        c1 = n_cells if t == n_chunks - 1 else (cell_ids[i1] if i1 < n_int else n_cells)
        acc = np.zeros(C, out.dtype)
        it = i0
        for cell in range(c0, c1):
            b = cell // nxy
            r = cell - b * nxy
            if it < n_int and cell_ids[it] == cell:
                acc[:] = 0
                for q in range(starts[it], starts[it] + lengths[it]):
                    w = depth[point_idx[q]]
                    m = feat_idx[q]
                    for c in range(C):
                        acc[c] += w * feats[m, c]
                for c in range(C):
                    out[b, c, r] = acc[c]
                it += 1
            else:
                for c in range(C):
                    out[b, c, r] = 0
    return out


@numba.njit(parallel=True, cache=True, fastmath=True)
def _pool_bwd_numba(gout, feats, depth, point_cell, d_bins, hw, grad_feats, grad_depth):  # pragma: no cover
    """One work item per feature row: its points' depth grads and its own grad (no races).

    ``gout [B*nx*ny, C]`` is the output grad channel-last.
    """
    M, C = feats.shape
    zero = depth[0] * 0  # the accumulator in the data's dtype
    for m in numba.prange(M):
        base = (m // hw) * d_bins * hw + m % hw
        for c in range(C):
            grad_feats[m, c] = 0
        for k in range(d_bins):
            p = base + k * hw
            cell = point_cell[p]
            if cell < 0:
                grad_depth[p] = 0
                continue
            w = depth[p]
            s = zero
            for c in range(C):
                g = gout[cell, c]
                s += g * feats[m, c]
                grad_feats[m, c] += w * g
            grad_depth[p] = s
    return grad_feats


# ----------------------------------------------------------------------------------------------
# Registered ops
# ----------------------------------------------------------------------------------------------
_HUGE_PAGE = 2 << 20


def _empty_large(*shape, dtype) -> torch.Tensor:
    """``torch.empty`` that asks Linux for transparent huge pages on big buffers (``madvise``).

    A fresh 40 MB BEV output otherwise costs ~10k page faults on first write (20+ ms here, more
    than the pooling itself); with ``MADV_HUGEPAGE`` it is ~20 faults. A hint only: where it is not
    available nothing changes. (``THP_MEM_ALLOC_ENABLE=1`` does the same for every torch tensor.)
    """
    out = torch.empty(*shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if nbytes >= 2 * _HUGE_PAGE and _madvise is not None:
        lo = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        hi = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if hi > lo:
            _madvise(lo, hi - lo, 14)  # MADV_HUGEPAGE; the result is ignored (a hint)
    return out


def _libc_madvise():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _libc_madvise()


def _native():
    from perception.ops._native import load

    return load("bev_pool")


@torch.library.custom_op("perception::bev_pool", mutates_args=())
def _bev_pool_op(feats: torch.Tensor, depth: torch.Tensor, point_idx: torch.Tensor, feat_idx: torch.Tensor,
                 cell_ids: torch.Tensor, interval_starts: torch.Tensor, interval_lengths: torch.Tensor,
                 point_cell: torch.Tensor, batch: int, nx: int, ny: int, d_bins: int, hw: int) -> torch.Tensor:
    """feats [M, C], depth [P], plan tensors → [batch, C, nx, ny].

    ``feat_idx [K]``: the feature row of every sorted point (``point_idx`` or ``point_pixel``);
    ``d_bins``/``hw`` give the same map for the backward (see :func:`_feature_layout`).
    """
    C = feats.shape[1]
    if feats.is_cuda:
        return _native().forward(feats, depth, point_idx, feat_idx, cell_ids, interval_starts, interval_lengths,
                                 batch, nx, ny)
    out = _empty_large(batch, C, nx, ny, dtype=feats.dtype)
    if out.numel() == 0:
        return out
    if point_idx.numel() == 0:
        return out.zero_()
    _pool_fwd_numba(feats.numpy(), depth.numpy(), point_idx.numpy(), feat_idx.numpy(), cell_ids.numpy(),
                    interval_starts.numpy(), interval_lengths.numpy(), out.view(batch, C, nx * ny).numpy())
    return out


@_bev_pool_op.register_fake
def _(feats, depth, point_idx, feat_idx, cell_ids, interval_starts, interval_lengths, point_cell, batch, nx, ny,
      d_bins, hw):
    return feats.new_empty(batch, feats.shape[1], nx, ny)


@torch.library.custom_op("perception::bev_pool_backward", mutates_args=())
def _bev_pool_backward_op(grad_out: torch.Tensor, feats: torch.Tensor, depth: torch.Tensor,
                          point_cell: torch.Tensor, d_bins: int, hw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_out [B, C, nx, ny] → (grad feats [M, C], grad depth [P])."""
    grad_out = grad_out.contiguous()
    if feats.is_cuda:
        gf, gd = _native().backward(grad_out, feats, depth, point_cell, d_bins, hw)
        return gf, gd
    grad_feats = torch.empty_like(feats)
    grad_depth = torch.empty_like(depth)
    if feats.shape[0] == 0 or depth.numel() == 0:
        return grad_feats.zero_(), grad_depth.zero_()
    B, C = grad_out.shape[:2]
    gout = grad_out.permute(0, 2, 3, 1).reshape(-1, C).contiguous()   # channel-last rows per cell
    _pool_bwd_numba(gout.numpy(), feats.numpy(), depth.numpy(), point_cell.numpy(), d_bins, hw,
                    grad_feats.numpy(), grad_depth.numpy())
    return grad_feats, grad_depth


@_bev_pool_backward_op.register_fake
def _(grad_out, feats, depth, point_cell, d_bins, hw):
    return torch.empty_like(feats), torch.empty_like(depth)


def _setup_context(ctx, inputs, output):
    feats, depth, *_, point_cell, batch, nx, ny, d_bins, hw = inputs
    ctx.save_for_backward(feats, depth, point_cell)
    ctx.layout = (d_bins, hw)


def _backward(ctx, grad):
    feats, depth, point_cell = ctx.saved_tensors
    gf, gd = torch.ops.perception.bev_pool_backward(grad, feats, depth, point_cell, *ctx.layout)
    return (gf, gd) + (None,) * 11


_bev_pool_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------
def bev_pool(feats: torch.Tensor, depth: torch.Tensor, geom_or_plan, grid: BevGrid | None = None,
             z_range=None, *, backend: str = "auto", return_plan: bool = False):
    """Pool depth-weighted frustum features into BEV: ``[B, C, nx, ny]``.

    Args:
        feats: per-point ``[B, N, D, H, W, C]`` or per-pixel ``[B, N, H, W, C]`` features (or either
            flattened to 2-D ``[rows, C]``).
        depth: ``[B, N, D, H, W]`` weight of every frustum point (a distribution over ``D`` per pixel).
        geom_or_plan: ``geom [B, N, D, H, W, 3]`` ego-frame xyz of every frustum point (then ``grid``
            and ``z_range`` are required and the plan is made on the fly), or a :class:`BevPoolPlan`
            from :func:`bev_pool_prepare` (then ``grid``/``z_range`` must be left out).
        backend: ``"auto"`` | ``"torch"`` | ``"cpu"`` | ``"cuda"``.
        return_plan: also return the plan (it holds the dropped counts).

    Float32 and float64 are computed in the promoted dtype of ``feats`` and ``depth``.
    """
    check_shape("depth", depth, 5)
    if not (feats.is_floating_point() and depth.is_floating_point()):
        raise ValueError(f"feats/depth: expected floating-point tensors, got {feats.dtype} and {depth.dtype}")
    f, d_bins, hw = _feature_layout(feats, depth.shape)
    dtype = torch.promote_types(f.dtype, depth.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    backend = resolve(backend, feats, depth)
    if isinstance(geom_or_plan, BevPoolPlan):
        if grid is not None or z_range is not None:
            raise ValueError("grid/z_range: leave them out when passing a BevPoolPlan (the plan fixes them)")
        plan = geom_or_plan
        geom = None
    else:
        geom = geom_or_plan
        if grid is None or z_range is None:
            raise ValueError("grid/z_range: required when the third argument is geom (or pass a BevPoolPlan)")
        check_shape("geom", geom, 6, 3)
        if tuple(geom.shape[:5]) != tuple(depth.shape):
            raise ValueError(f"geom: expected [B, N, D, H, W, 3] matching depth {tuple(depth.shape)}, "
                             f"got {tuple(geom.shape)}")
        if geom.device != depth.device:
            raise ValueError(f"geom: expected on {depth.device}, got {geom.device}")
        plan = None if backend == "torch" and not return_plan else bev_pool_prepare(
            geom, grid, z_range, backend="cpu" if backend == "cpu" else "torch")
    if plan is not None:
        if tuple(plan.frustum_shape) != tuple(depth.shape):
            raise ValueError(f"geom_or_plan: the plan was made for frustum {plan.frustum_shape}, "
                             f"depth is {tuple(depth.shape)}")
        if plan.point_cell.device != depth.device:
            raise ValueError(f"geom_or_plan: the plan is on {plan.point_cell.device}, depth on {depth.device}; "
                             "use plan.to(device)")
    f = f.to(dtype)
    d = depth.reshape(-1).to(dtype)
    if backend == "torch":
        out = (bev_pool_reference(f, depth.to(dtype), geom, grid, z_range) if geom is not None
               else _bev_pool_torch_plan(f, d, plan, d_bins, hw))
    else:
        B = depth.shape[0]
        nx, ny = plan.bev_shape
        feat_idx = plan.point_idx if d_bins == 1 else plan.point_pixel
        out = torch.ops.perception.bev_pool(f.contiguous(), d.contiguous(), plan.point_idx, feat_idx, plan.cell_ids,
                                            plan.interval_starts, plan.interval_lengths, plan.point_cell,
                                            B, nx, ny, d_bins, hw)
    return (out, plan) if return_plan else out
