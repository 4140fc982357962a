"""bev_pool: the numba and CUDA kernels against the plain-torch index_add_ reference."""
import math

import pytest
import torch

from perception.geometry.grid import BevGrid
from perception.ops.bev_pool import (BevPoolPlan, _bev_pool_backward_op, _bev_pool_op, bev_pool, bev_pool_prepare,
                                     bev_pool_reference)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
GRID = BevGrid(-4.0, -3.0, 4.0, 3.0, 0.5)          # 16 x 12 cells
Z = (-1.0, 2.0)


def frustum(B=2, N=2, D=5, H=3, W=4, C=3, seed=0, dtype=torch.float64, bad=True):
    """Random frustum: xyz over a region ~25% larger than the grid (some points outside), a few NaN/inf."""
    g = torch.Generator().manual_seed(seed)
    geom = torch.rand(B, N, D, H, W, 3, generator=g, dtype=torch.float64)
    geom = geom * torch.tensor([10.0, 7.5, 3.75]) - torch.tensor([5.0, 3.75, 1.2])
    if bad and geom.numel():
        flat = geom.view(-1, 3)
        flat[0, 0] = math.nan
        flat[min(5, flat.shape[0] - 1), 2] = math.inf
        flat[min(7, flat.shape[0] - 1), 1] = -math.inf
    depth = torch.rand(B, N, D, H, W, generator=g, dtype=torch.float64).softmax(dim=2)
    feats_px = torch.randn(B, N, H, W, C, generator=g, dtype=torch.float64)
    feats_pt = torch.randn(B, N, D, H, W, C, generator=g, dtype=torch.float64)
    return geom.to(dtype), depth.to(dtype), feats_px.to(dtype), feats_pt.to(dtype)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["pixel", "point", "pixel_flat", "point_flat"])
@pytest.mark.parametrize("shape", [(2, 2, 5, 3, 4, 3), (1, 3, 7, 2, 5, 8), (1, 1, 1, 1, 1, 1)])
def test_forward_matches_reference(dtype, layout, shape):
    B, N, D, H, W, C = shape
    geom, depth, fpx, fpt = frustum(B, N, D, H, W, C, dtype=dtype, bad=B * N * D * H * W > 8)
    feats = {"pixel": fpx, "point": fpt, "pixel_flat": fpx.reshape(-1, C), "point_flat": fpt.reshape(-1, C)}[layout]
    ref = bev_pool_reference(feats, depth, geom, GRID, Z)
    assert ref.shape == (B, C, 16, 12) and ref.dtype == dtype
    for backend in ("cpu", "torch"):
        out = bev_pool(feats, depth, geom, GRID, Z, backend=backend)
        torch.testing.assert_close(out, ref, **tol(dtype))
    plan = bev_pool_prepare(geom, GRID, Z)
    torch.testing.assert_close(bev_pool(feats, depth, plan), ref, **tol(dtype))
    torch.testing.assert_close(bev_pool(feats, depth, plan, backend="torch"), ref, **tol(dtype))


def test_plan_counts_and_backends_agree():
    geom, *_ = frustum()
    plan = bev_pool_prepare(geom, GRID, Z, backend="cpu")
    plan_t = bev_pool_prepare(geom, GRID, Z, backend="torch")
    for name in ("point_idx", "point_pixel", "cell_ids", "interval_starts", "interval_lengths", "point_cell"):
        assert torch.equal(getattr(plan, name), getattr(plan_t, name)), name
    assert plan.n_nonfinite == plan_t.n_nonfinite == 3
    P = geom[..., 0].numel()
    inside = ((geom[..., 0] >= -4) & (geom[..., 0] < 4) & (geom[..., 1] >= -3) & (geom[..., 1] < 3)
              & (geom[..., 2] >= -1) & (geom[..., 2] < 2) & torch.isfinite(geom).all(-1))
    assert plan.n_kept == int(inside.sum()) and plan.n_kept + plan.n_dropped == P
    assert plan.n_outside == plan_t.n_outside > 0
    assert int(plan.interval_lengths.sum()) == plan.n_kept
    assert bool((plan.cell_ids[1:] > plan.cell_ids[:-1]).all())             # one interval per cell, sorted
    _, plan2 = bev_pool(torch.zeros(2, 2, 3, 4, 1, dtype=torch.float64), frustum()[1], geom, GRID, Z,
                        return_plan=True)
    assert isinstance(plan2, BevPoolPlan) and plan2.n_nonfinite == 3


def test_boundaries_and_duplicates():
    # x_min / y_min / z_min are inside (half-open grid), x_max / y_max / z_max are not; exact cell edges
    pts = torch.tensor([[-4.0, -3.0, 0.0],    # cell (0, 0)
                        [-4.0, -3.0, -1.0],   # cell (0, 0), z = z_min kept
                        [3.5, 2.5, 1.999],    # cell (15, 11)
                        [4.0, 0.0, 0.0],      # x = x_max: dropped
                        [0.0, 3.0, 0.0],      # y = y_max: dropped
                        [0.0, 0.0, 2.0],      # z = z_max: dropped
                        [0.5, 0.5, 0.0],      # exact edge: cell (9, 7)
                        [0.5, 0.5, 0.0]],     # duplicate point: sums
                       dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        geom = pts.to(dtype).view(1, 1, 1, 2, 4, 3)
        depth = torch.arange(1.0, 9.0, dtype=dtype).view(1, 1, 1, 2, 4)
        feats = torch.ones(1, 1, 2, 4, 2, dtype=dtype)
        out, plan = bev_pool(feats, depth, geom, GRID, Z, return_plan=True)
        assert plan.n_outside == 3 and plan.n_nonfinite == 0
        assert out[0, :, 0, 0].tolist() == [3.0, 3.0]
        assert out[0, :, 15, 11].tolist() == [3.0, 3.0]
        assert out[0, :, 9, 7].tolist() == [15.0, 15.0]
        assert float(out.sum()) == 2 * (3 + 3 + 15)
        torch.testing.assert_close(out, bev_pool_reference(feats, depth, geom, GRID, Z))


def test_all_dropped_and_empty():
    geom, depth, fpx, _ = frustum(dtype=torch.float32)
    far = geom + 100.0
    out, plan = bev_pool(fpx, depth, far, GRID, Z, return_plan=True)
    assert plan.n_kept == 0 and float(out.abs().sum()) == 0 and out.shape == (2, 3, 16, 12)
    # empty frustum (no depth bins) and zero channels
    g0, d0, f0, _ = frustum(D=0, bad=False, dtype=torch.float32)
    for backend in ("cpu", "torch"):
        out = bev_pool(f0, d0, g0, GRID, Z, backend=backend)
        assert out.shape == (2, 3, 16, 12) and out.dtype == torch.float32 and float(out.abs().sum()) == 0
    g, d, f, _ = frustum(C=0)
    assert bev_pool(f, d, g, GRID, Z).shape == (2, 0, 16, 12)


def test_noncontiguous_and_mixed_dtype():
    geom, depth, fpx, _ = frustum()
    feats_nc = fpx.transpose(2, 3).contiguous().transpose(2, 3)            # same values, other strides
    depth_nc = depth.transpose(3, 4).contiguous().transpose(3, 4)
    assert not feats_nc.is_contiguous() and not depth_nc.is_contiguous()
    ref = bev_pool_reference(fpx, depth, geom, GRID, Z)
    torch.testing.assert_close(bev_pool(feats_nc, depth_nc, geom, GRID, Z), ref)
    out = bev_pool(fpx.float(), depth, geom, GRID, Z)                      # float32 + float64 -> float64
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["pixel", "point"])
def test_gradcheck(seed, layout):
    geom, depth, fpx, fpt = frustum(B=1, N=2, D=3, H=2, W=3, C=2, seed=seed)
    feats = (fpx if layout == "pixel" else fpt).requires_grad_()
    depth = depth.requires_grad_()
    plan = bev_pool_prepare(geom, GRID, Z)
    assert torch.autograd.gradcheck(lambda f, d: bev_pool(f, d, plan), (feats, depth))


@pytest.mark.parametrize("layout", ["pixel", "point"])
def test_grads_match_reference(layout):
    geom, depth, fpx, fpt = frustum(B=2, N=2, D=6, H=3, W=4, C=5, seed=3)
    feats = fpx if layout == "pixel" else fpt
    go = torch.randn(2, 5, 16, 12, dtype=torch.float64)
    grads = []
    for fn in (lambda f, d: bev_pool(f, d, geom, GRID, Z), lambda f, d: bev_pool_reference(f, d, geom, GRID, Z)):
        f, d = feats.clone().requires_grad_(), depth.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(f, d), (f, d), go))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert float(grads[0][1].view(-1)[0]) == 0.0    # the NaN point (dropped) gets no depth gradient


def test_opcheck():
    geom, depth, fpx, fpt = frustum(B=1, N=2, D=3, H=2, W=3, C=2)
    plan = bev_pool_prepare(geom, GRID, Z)
    for feats, d_bins, hw, idx in ((fpx.reshape(-1, 2), 3, 6, plan.point_pixel),
                                   (fpt.reshape(-1, 2), 1, 1, plan.point_idx)):
        args = (feats.clone().requires_grad_(), depth.reshape(-1).clone().requires_grad_(), plan.point_idx, idx,
                plan.cell_ids, plan.interval_starts, plan.interval_lengths, plan.point_cell, 1, 16, 12, d_bins, hw)
        torch.library.opcheck(_bev_pool_op, args)
        torch.library.opcheck(_bev_pool_backward_op, (torch.randn(1, 2, 16, 12, dtype=torch.float64), feats,
                                                      depth.reshape(-1), plan.point_cell, d_bins, hw))


def test_validation():
    geom, depth, fpx, _ = frustum()
    with pytest.raises(ValueError, match="feats"):
        bev_pool(fpx[..., None], depth, geom, GRID, Z)
    with pytest.raises(ValueError, match="depth"):
        bev_pool(fpx, depth[0], geom, GRID, Z)
    with pytest.raises(ValueError, match="geom"):
        bev_pool(fpx, depth, geom[..., :2], GRID, Z)
    with pytest.raises(ValueError, match="geom"):
        bev_pool(fpx, depth, geom[:, :1], GRID, Z)
    with pytest.raises(ValueError, match="z_range"):
        bev_pool(fpx, depth, geom, GRID, (2.0, 1.0))
    with pytest.raises(ValueError, match="grid"):
        bev_pool(fpx, depth, geom, (0, 0, 1, 1), Z)
    with pytest.raises(ValueError, match="grid/z_range"):
        bev_pool(fpx, depth, geom)
    plan = bev_pool_prepare(geom, GRID, Z)
    with pytest.raises(ValueError, match="grid/z_range"):
        bev_pool(fpx, depth, plan, GRID, Z)
    g1, d1, f1, _ = frustum(D=4)
    with pytest.raises(ValueError, match="plan"):
        bev_pool(f1, d1, plan)
    with pytest.raises(ValueError, match="backend"):
        bev_pool(fpx, depth, plan, backend="gpu")


@pytest.mark.gpu
@cuda
def test_cuda_matches_cpu():
    geom, depth, fpx, fpt = frustum(B=2, N=3, D=8, H=4, W=6, C=7, dtype=torch.float32)
    for feats in (fpx, fpt):
        ref = bev_pool(feats, depth, geom, GRID, Z, backend="cpu")
        f, d = feats.cuda().requires_grad_(), depth.cuda().requires_grad_()
        out = bev_pool(f, d, geom.cuda(), GRID, Z)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)
        go = torch.randn_like(ref)
        gc = torch.autograd.grad(out, (f, d), go.cuda())
        fc, dc = feats.clone().requires_grad_(), depth.clone().requires_grad_()
        gr = torch.autograd.grad(bev_pool(fc, dc, geom, GRID, Z), (fc, dc), go)
        for a, b in zip(gc, gr):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
