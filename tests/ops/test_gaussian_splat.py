"""gaussian_splat_bev / gaussian_splat_volume: numba and CUDA kernels against the plain-torch references."""
import math

import pytest
import torch

from perception.geometry.grid import BevGrid, VoxelGrid
from perception.ops.gaussian_splat import (_splat_bev_backward_op, _splat_bev_op, _splat_volume_backward_op,
                                           _splat_volume_op, gaussian_splat_bev, gaussian_splat_bev_reference,
                                           gaussian_splat_volume, gaussian_splat_volume_reference,
                                           quaternion_to_rotmat)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
GRID = BevGrid(-6.0, -4.0, 6.0, 5.0, 0.5)                  # 24 x 18, not square
VGRID = VoxelGrid(-4.0, -3.0, -1.0, 4.0, 3.0, 2.0, (0.5, 0.5, 0.75))   # 16 x 12 x 4


def gaussians2d(G=40, C=3, seed=0, dtype=torch.float64, lo=0.2, hi=1.5, ext=(7.0, 5.5)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(G, 2, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor(ext, dtype=torch.float64)
    scales = lo + torch.rand(G, 2, generator=g, dtype=torch.float64) * (hi - lo)
    rot = (torch.rand(G, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    opac = torch.rand(G, generator=g, dtype=torch.float64)
    feats = torch.randn(G, C, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means, scales, rot, opac, feats)]


def gaussians3d(G=30, C=3, seed=0, dtype=torch.float64, lo=0.2, hi=1.2):
    g = torch.Generator().manual_seed(seed)
    extent = torch.tensor([5.0, 4.0, 2.0], dtype=torch.float64)
    means = (torch.rand(G, 3, generator=g, dtype=torch.float64) * 2 - 1) * extent
    means[:, 2] += 0.5
    scales = lo + torch.rand(G, 3, generator=g, dtype=torch.float64) * (hi - lo)
    quat = torch.randn(G, 4, generator=g, dtype=torch.float64)
    quat = quat / quat.norm(dim=1, keepdim=True)
    opac = torch.rand(G, generator=g, dtype=torch.float64)
    feats = torch.randn(G, C, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means, scales, quat, opac, feats)]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)


def dense_bev(means, scales, rot, opac, feats, grid):
    """Every Gaussian against every cell centre: the obviously-correct (and slow) definition."""
    centres = torch.as_tensor(grid.cell_centers(), dtype=means.dtype).reshape(-1, 2)     # [cells, 2]
    d = centres[None] - means[:, None]                                                   # [G, cells, 2]
    c, s = torch.cos(rot)[:, None], torch.sin(rot)[:, None]
    u = (c * d[..., 0] + s * d[..., 1]) / scales[:, None, 0]
    v = (-s * d[..., 0] + c * d[..., 1]) / scales[:, None, 1]
    d2 = u ** 2 + v ** 2
    w = torch.where(d2 <= 9, opac[:, None] * torch.exp(-0.5 * d2), torch.zeros_like(d2))
    return (w.T @ feats).T.reshape(feats.shape[1], *grid.shape)


def dense_volume(means, scales, quat, opac, feats, grid):
    centres = torch.as_tensor(grid.cell_centers(), dtype=means.dtype).reshape(-1, 3)
    R = quaternion_to_rotmat(quat)
    local = torch.einsum("gab,gca->gcb", R, centres[None] - means[:, None]) / scales[:, None]
    d2 = (local ** 2).sum(-1)
    w = torch.where(d2 <= 9, opac[:, None] * torch.exp(-0.5 * d2), torch.zeros_like(d2))
    return (w.T @ feats).T.reshape(feats.shape[1], *grid.shape)


# ---------------------------------------------------------------------------------------------- BEV
def test_reference_matches_dense_definition():
    args = gaussians2d(G=25, C=2, seed=5)
    torch.testing.assert_close(gaussian_splat_bev_reference(*args, GRID), dense_bev(*args, GRID))
    args3 = gaussians3d(G=20, C=2, seed=5)
    torch.testing.assert_close(gaussian_splat_volume_reference(*args3, VGRID), dense_volume(*args3, VGRID))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("G,C,scale", [(40, 3, (0.2, 1.5)), (1, 1, (0.5, 0.5)), (200, 16, (0.05, 3.0)),
                                       (60, 5, (0.01, 0.2)), (80, 83, (0.1, 2.0))])   # 83 = 64 + 16 + 3
@pytest.mark.parametrize("grid", [GRID, BevGrid(-3.0, -3.0, 3.3, 2.7, 0.3)])
def test_bev_forward_matches_reference(dtype, G, C, scale, grid):
    args = gaussians2d(G, C, seed=G, dtype=dtype, lo=scale[0], hi=scale[1])
    ref = gaussian_splat_bev_reference(*args, grid)
    out = gaussian_splat_bev(*args, grid)
    assert out.shape == (C, *grid.shape) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **tol(dtype))
    torch.testing.assert_close(gaussian_splat_bev(*args, grid, backend="torch"), ref)


def test_bev_cutoff_exactly_on_boundary():
    # axis-aligned, mean on a cell centre, sigma = 0.5 m: the cells 3 sigma = 3 cells away have d2 = 9 exactly
    # and are in; diagonal neighbours at the same ring are out
    for dtype in (torch.float32, torch.float64):
        means = torch.tensor([[0.25, 0.25]], dtype=dtype)
        args = [means, torch.tensor([[0.5, 0.5]], dtype=dtype), torch.zeros(1, dtype=dtype),
                torch.ones(1, dtype=dtype), torch.ones(1, 1, dtype=dtype)]
        out = gaussian_splat_bev(*args, GRID)[0]
        i, j = 12, 8                                               # the mean's cell
        assert abs(float(out[i, j]) - 1.0) < 1e-6
        for di, dj in ((3, 0), (-3, 0), (0, 3), (0, -3)):
            assert abs(float(out[i + di, j + dj]) - math.exp(-4.5)) < 1e-7
        for di, dj in ((4, 0), (0, -4), (3, 1), (2, 3)):
            assert float(out[i + di, j + dj]) == 0.0
        assert int((out > 0).sum()) == 29                         # cells of the disc x^2 + y^2 <= 9
        torch.testing.assert_close(out, gaussian_splat_bev_reference(*args, GRID)[0])


def test_bev_outside_grid_duplicates_and_empty():
    args = gaussians2d(G=3, C=2)
    args[0] = torch.tensor([[100.0, 0.0], [0.0, -1e30], [5.9, 4.9]], dtype=torch.float64)  # off, far off, corner
    args[1] = torch.full((3, 2), 0.3, dtype=torch.float64)                                  # reach 0.9 m
    out = gaussian_splat_bev(*args, GRID)
    torch.testing.assert_close(out, gaussian_splat_bev_reference(*args, GRID))
    assert float(out[:, :20].abs().sum()) == 0 and float(out[:, -1, -1].abs().sum()) > 0
    dup = [torch.cat([t, t]) for t in gaussians2d(G=5, C=2)]     # the same Gaussians twice: twice the output
    torch.testing.assert_close(gaussian_splat_bev(*dup, GRID), 2 * gaussian_splat_bev(*[t[:5] for t in dup], GRID))
    empty = gaussians2d(G=0, C=4, dtype=torch.float32)
    for backend in ("cpu", "torch"):
        out = gaussian_splat_bev(*empty, GRID, backend=backend)
        assert out.shape == (4, 24, 18) and out.dtype == torch.float32 and float(out.abs().sum()) == 0


def test_bev_strips_balanced_across_threads():
    """The CPU forward deals its row strips into one bin per thread by estimated work: every strip
    once, no bin over the even share by more than its largest strip; clustered means still match."""
    import numba
    import numpy as np

    from perception.ops.gaussian_splat import _balance

    work = np.array([900, 10, 10, 850, 40, 30, 700, 5, 5, 5, 20, 600], np.int64)
    for nbins in (1, 2, 3, 5):
        bptr, items = _balance(work, nbins)
        assert bptr[0] == 0 and bptr[-1] == len(work) and sorted(items.tolist()) == list(range(len(work)))
        loads = [int(work[items[bptr[b]:bptr[b + 1]]].sum()) for b in range(nbins)]
        assert max(loads) <= work.sum() / nbins + work.max()
    args = gaussians2d(G=300, C=4, seed=3, ext=(1.5, 1.0))             # a cluster: a few strips hold all
    grid = BevGrid(-12.0, -10.0, 12.0, 9.0, 0.25)
    threads = numba.get_num_threads()
    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            torch.testing.assert_close(gaussian_splat_bev(*args, grid), gaussian_splat_bev_reference(*args, grid))
    finally:
        numba.set_num_threads(threads)


def test_bev_nonfinite_dropped_and_counted():
    args = gaussians2d(G=10, C=2)
    bad = [t.clone() for t in args]
    bad[0][1, 0] = math.nan
    bad[1][4, 1] = math.inf
    bad[2][7] = math.nan
    bad[3][9] = math.nan
    keep = [i for i in range(10) if i not in (1, 4, 7, 9)]
    out, n = gaussian_splat_bev(*bad, GRID, return_count=True)
    assert n == 4
    torch.testing.assert_close(out, gaussian_splat_bev(*[t[keep] for t in args], GRID))
    _, n_t = gaussian_splat_bev(*bad, GRID, backend="torch", return_count=True)
    assert n_t == 4
    p = [t.clone().requires_grad_() for t in bad]
    gaussian_splat_bev(*p, GRID).sum().backward()
    assert all(float(t.grad[[1, 4, 7, 9]].abs().sum()) == 0 for t in p)
    assert all(torch.isfinite(t.grad).all() for t in p)


def test_bev_noncontiguous_and_mixed_dtypes():
    args = gaussians2d(G=30, C=4)
    nc = [args[0].T.contiguous().T, args[1].T.contiguous().T, args[2][::1], args[3], args[4].T.contiguous().T]
    assert not nc[0].is_contiguous() and not nc[4].is_contiguous()
    ref = gaussian_splat_bev_reference(*args, GRID)
    torch.testing.assert_close(gaussian_splat_bev(*nc, GRID), ref)
    mixed = [args[0].float(), *args[1:]]                        # float32 means + float64 rest -> float64
    assert gaussian_splat_bev(*mixed, GRID).dtype == torch.float64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bev_gradcheck(seed):
    args = gaussians2d(G=4, C=2, seed=seed, ext=(3.0, 2.5))
    args = [t.requires_grad_() for t in args]
    small = BevGrid(-3.0, -2.5, 3.0, 2.5, 0.5)
    assert torch.autograd.gradcheck(lambda *a: gaussian_splat_bev(*a, small), args)


def test_bev_grads_match_reference():
    args = gaussians2d(G=50, C=6, seed=4, lo=0.1, hi=2.0)
    go = torch.randn(6, *GRID.shape, dtype=torch.float64)
    grads = []
    for fn in (gaussian_splat_bev, gaussian_splat_bev_reference):
        p = [t.clone().requires_grad_() for t in args]
        grads.append(torch.autograd.grad(fn(*p, GRID), p, go))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------------------------------- volume
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("G,C,scale", [(30, 3, (0.2, 1.2)), (1, 2, (0.5, 0.5)), (80, 9, (0.05, 2.0))])
def test_volume_forward_matches_reference(dtype, G, C, scale):
    args = gaussians3d(G, C, seed=G, dtype=dtype, lo=scale[0], hi=scale[1])
    ref = gaussian_splat_volume_reference(*args, VGRID)
    out = gaussian_splat_volume(*args, VGRID)
    assert out.shape == (C, 16, 12, 4) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **tol(dtype))
    torch.testing.assert_close(gaussian_splat_volume(*args, VGRID, backend="torch"), ref)


def test_volume_edge_cases():
    args = gaussians3d(G=8, C=2)
    scaled = list(args)
    scaled[2] = args[2] * torch.linspace(0.5, 3.0, 8, dtype=torch.float64)[:, None]   # quaternions are normalised
    torch.testing.assert_close(gaussian_splat_volume(*scaled, VGRID), gaussian_splat_volume(*args, VGRID))
    bad = [t.clone() for t in args]
    bad[0][2, 2] = math.inf
    bad[2][5, 0] = math.nan
    out, n = gaussian_splat_volume(*bad, VGRID, return_count=True)
    assert n == 2
    keep = [0, 1, 3, 4, 6, 7]
    torch.testing.assert_close(out, gaussian_splat_volume(*[t[keep] for t in args], VGRID))
    # on the boundary: axis-aligned, mean on a voxel centre, sigma = one voxel / 3 along x
    one = [torch.tensor([[0.25, 0.25, 0.125]]), torch.tensor([[0.5, 1.0, 1.0]]), torch.tensor([[1.0, 0, 0, 0]]),
           torch.ones(1), torch.ones(1, 1)]
    v = gaussian_splat_volume(*[t.double() for t in one], VGRID)[0]
    assert abs(float(v[8 + 3, 6, 1]) - math.exp(-4.5)) < 1e-12 and float(v[8 + 4, 6, 1]) == 0.0
    empty = gaussians3d(G=0, C=3, dtype=torch.float32)
    out = gaussian_splat_volume(*empty, VGRID)
    assert out.shape == (3, 16, 12, 4) and out.dtype == torch.float32 and float(out.abs().sum()) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_volume_gradcheck(seed):
    small = VoxelGrid(-2.0, -2.0, -1.0, 2.0, 2.0, 1.0, 0.5)
    args = gaussians3d(G=3, C=2, seed=seed, lo=0.3, hi=0.9)
    args[0] = args[0] * 0.4
    args = [t.requires_grad_() for t in args]
    assert torch.autograd.gradcheck(lambda *a: gaussian_splat_volume(*a, small), args)


def test_volume_grads_match_reference():
    args = gaussians3d(G=40, C=5, seed=6, lo=0.1, hi=1.5)
    go = torch.randn(5, 16, 12, 4, dtype=torch.float64)
    grads = []
    for fn in (gaussian_splat_volume, gaussian_splat_volume_reference):
        p = [t.clone().requires_grad_() for t in args]
        grads.append(torch.autograd.grad(fn(*p, VGRID), p, go))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------------------------------- registration
def test_opcheck():
    m, s, r, o, f = gaussians2d(G=6, C=2, ext=(3.0, 2.5))
    grid_args = (-3.0, -2.5, 0.5, 12, 10)
    torch.library.opcheck(_splat_bev_op, tuple(t.clone().requires_grad_() for t in (m, s, r, o, f)) + grid_args)
    torch.library.opcheck(_splat_bev_backward_op, (torch.randn(2, 12, 10, dtype=torch.float64), m, s, r, o, f)
                          + grid_args)
    m3, s3, q3, o3, f3 = gaussians3d(G=5, C=2)
    R = quaternion_to_rotmat(q3)
    vol_args = ([-4.0, -3.0, -1.0], [0.5, 0.5, 0.75], [16, 12, 4])
    torch.library.opcheck(_splat_volume_op, tuple(t.clone().requires_grad_() for t in (m3, s3, R, o3, f3)) + vol_args)
    torch.library.opcheck(_splat_volume_backward_op, (torch.randn(2, 16, 12, 4, dtype=torch.float64), m3, s3, R, o3,
                                                      f3) + vol_args)


def test_validation():
    m, s, r, o, f = gaussians2d(G=5, C=2)
    with pytest.raises(ValueError, match="means"):
        gaussian_splat_bev(m[:, :1], s, r, o, f, GRID)
    with pytest.raises(ValueError, match="scales"):
        gaussian_splat_bev(m, s[:4], r, o, f, GRID)
    with pytest.raises(ValueError, match="scales"):
        gaussian_splat_bev(m, -s, r, o, f, GRID)
    with pytest.raises(ValueError, match="opacities"):
        gaussian_splat_bev(m, s, r, o + 1.5, f, GRID)
    with pytest.raises(ValueError, match="rotations"):
        gaussian_splat_bev(m, s, r[:, None], o, f, GRID)
    with pytest.raises(ValueError, match="features"):
        gaussian_splat_bev(m, s, r, o, f[:, 0], GRID)
    with pytest.raises(ValueError, match="grid"):
        gaussian_splat_bev(m, s, r, o, f, VGRID)
    with pytest.raises(ValueError, match="backend"):
        gaussian_splat_bev(m, s, r, o, f, GRID, backend="gpu")
    m3, s3, q3, o3, f3 = gaussians3d(G=4, C=2)
    with pytest.raises(ValueError, match="rotations"):
        gaussian_splat_volume(m3, s3, q3[:, :3], o3, f3, VGRID)
    with pytest.raises(ValueError, match="rotations"):
        gaussian_splat_volume(m3, s3, q3 * 0, o3, f3, VGRID)
    with pytest.raises(ValueError, match="grid"):
        gaussian_splat_volume(m3, s3, q3, o3, f3, GRID)


@pytest.mark.gpu
@cuda
def test_cuda_matches_cpu():
    for dtype in (torch.float32, torch.float64):
        t = tol(dtype) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        for fn, args, grid in ((gaussian_splat_bev, gaussians2d(G=300, C=11, dtype=dtype, lo=0.05, hi=2.0), GRID),
                               (gaussian_splat_volume, gaussians3d(G=200, C=10, dtype=dtype), VGRID)):
            ref = fn(*args, grid, backend="cpu")
            p = [a.cuda().requires_grad_() for a in args]
            out = fn(*p, grid)
            torch.testing.assert_close(out.cpu(), ref, **t)
            go = torch.randn_like(ref)
            gc = torch.autograd.grad(out, p, go.cuda())
            pc = [a.clone().requires_grad_() for a in args]
            gr = torch.autograd.grad(fn(*pc, grid, backend="cpu"), pc, go)
            for a, b in zip(gc, gr):
                torch.testing.assert_close(a.cpu(), b, **t)
