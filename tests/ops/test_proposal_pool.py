"""MSF voxel-sampler pooling (perception/ops/proposal_pool.py) against its brute-force reference."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import perception.ops.proposal_pool as pp
from perception.ops.proposal_pool import (PooledPoints, proposal_cylinders, proposal_point_pool,
                                          proposal_point_pool_reference)

KITTI = Path(__file__).resolve().parents[2].parent / "shared/data/kitti/training/velodyne/000001.bin"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")


def _scene(seed: int, sizes, K: int, C: int = 4, dtype=torch.float32, extent: float = 12.0):
    """Per-frame random points (with duplicated rows) and [T, K, 7] proposals, some far away."""
    g = torch.Generator().manual_seed(seed)
    pts = []
    for n in sizes:
        p = torch.rand(n, C, generator=g, dtype=torch.float64) * 2 - 1
        p[:, :2] *= extent
        p[:, 2] *= 2.0
        if n > 4:
            p[: n // 8] = p[n - n // 8:]  # duplicates
        pts.append(p.to(dtype))
    T = len(sizes)
    props = torch.empty(T, K, 7, dtype=torch.float64)
    props[..., :2] = (torch.rand(T, K, 2, generator=g, dtype=torch.float64) * 2 - 1) * extent * 1.2
    props[..., 2] = torch.rand(T, K, generator=g, dtype=torch.float64) * 2 - 2.5
    props[..., 3:6] = torch.rand(T, K, 3, generator=g, dtype=torch.float64) * 4 + 0.3
    props[..., 6] = (torch.rand(T, K, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    return pts, props.to(dtype)


def _same(a: PooledPoints, b: PooledPoints) -> None:
    assert a.points.shape == b.points.shape and a.points.dtype == b.points.dtype
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.counts, b.counts)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.points, b.points, rtol=0, atol=0)
    assert a.dropped_nonfinite == b.dropped_nonfinite


def _brute_force(pts: list[torch.Tensor], props: torch.Tensor, P: int, radius_scale=1.0, z_margin=0.0):
    """Loop-based expectation, first-P sampling: (indices, counts) as numpy."""
    T, K = props.shape[:2]
    idx = np.full((T, K, P), -1, np.int64)
    cnt = np.zeros((T, K), np.int64)
    off = 0
    for t, p in enumerate(pts):
        xyz = p[:, :3].double().numpy()
        for k in range(K):
            x, y, z, dx, dy, dz, _ = props[t, k].double().tolist()
            r = radius_scale * 0.5 * math.hypot(dx, dy)
            d2 = (xyz[:, 0] - x) ** 2 + (xyz[:, 1] - y) ** 2
            inside = np.flatnonzero((d2 <= r * r) & (xyz[:, 2] >= z - z_margin) & (xyz[:, 2] <= z + dz + z_margin))
            cnt[t, k] = len(inside)
            idx[t, k, : min(P, len(inside))] = inside[:P] + off
        off += len(p)
    return idx, cnt


# ------------------------------------------------------------------------------------------------
# forward against the reference
# ------------------------------------------------------------------------------------------------

CASES = [((3000,), 17, 8), ((2000, 0, 1500), 5, 24), ((500, 700, 800, 100), 9, 6)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [None, 11])
@pytest.mark.parametrize("sizes,K,P", CASES)
def test_cpu_matches_reference(dtype, seed, sizes, K, P):
    pts, props = _scene(len(sizes) * 100 + K, sizes, K, dtype=dtype)
    ours = proposal_point_pool(pts, props, max_points=P, seed=seed, backend="cpu")
    ref = proposal_point_pool_reference(pts, props, max_points=P, seed=seed)
    _same(ours, ref)
    assert ours.points.shape == (len(sizes), K, P, 4) and ours.points.dtype == dtype
    assert ours.indices.dtype == torch.int64 and ours.counts.dtype == torch.int64 and ours.mask.dtype == torch.bool
    assert (ours.counts > P).any(), "the case should exercise sampling"
    _same(proposal_point_pool(pts, props, max_points=P, seed=seed, backend="torch"), ref)


def test_reference_matches_loops():
    pts, props = _scene(3, (800, 600), 12)
    for rs, zm in [(1.0, 0.0), (1.5, 0.25)]:
        ref = proposal_point_pool_reference(pts, props, max_points=10, radius_scale=rs, z_margin=zm)
        idx, cnt = _brute_force(pts, props, 10, rs, zm)
        np.testing.assert_array_equal(ref.indices.numpy(), idx)
        np.testing.assert_array_equal(ref.counts.numpy(), cnt)
        _same(proposal_point_pool(pts, props, max_points=10, radius_scale=rs, z_margin=zm), ref)
    packed = torch.cat(pts)
    sel = ref.indices.clamp_min(0)
    torch.testing.assert_close(ref.points, torch.where(ref.mask[..., None], packed[sel], 0.0))


def test_list_and_packed_inputs_agree():
    pts, props = _scene(4, (400, 0, 300), 6)
    a = proposal_point_pool(pts, props, max_points=16)
    packed = torch.cat(pts)
    b = proposal_point_pool(packed, props, torch.tensor([0, 400, 400, 700]), max_points=16)
    c = proposal_point_pool(packed, props, [0, 400, 400, 700], max_points=16)
    _same(a, b)
    _same(a, c)
    one = proposal_point_pool(pts[0], props[:1], max_points=16)  # a packed tensor without offsets: 1 frame
    _same(one, proposal_point_pool([pts[0]], props[:1], max_points=16))


def test_random_subset_is_seeded_uniform_and_reproducible():
    pts, props = _scene(5, (3000, 2500), 10)
    P = 8
    first = proposal_point_pool(pts, props, max_points=P)
    a = proposal_point_pool(pts, props, max_points=P, seed=5)
    again = proposal_point_pool(pts, props, max_points=P, seed=5)
    other = proposal_point_pool(pts, props, max_points=P, seed=6)
    _same(a, again)
    _same(a, proposal_point_pool_reference(pts, props, max_points=P, seed=5))
    assert torch.equal(a.counts, first.counts)
    idx_all, _ = _brute_force(pts, props, 2000)
    for t in range(2):
        for k in range(10):
            n = int(a.counts[t, k])
            sel = a.indices[t, k]
            assert int(a.mask[t, k].sum()) == min(n, P)
            got = sel[: min(n, P)].numpy()
            assert np.all(np.diff(got) > 0), "kept indices are in increasing point order"
            assert set(got.tolist()) <= set(idx_all[t, k, :n].tolist())
    big = a.counts > P
    assert big.any()
    assert not torch.equal(a.indices[big], other.indices[big])
    assert not torch.equal(a.indices[big], first.indices[big])


# ------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_empty_inputs(backend):
    props = torch.tensor([[[0.0, 0, -1, 2, 2, 2, 0]]]).repeat(2, 3, 1)
    out = proposal_point_pool(torch.zeros(0, 5), props, [0, 0, 0], max_points=4, backend=backend)
    assert out.points.shape == (2, 3, 4, 5) and out.points.dtype == torch.float32
    assert not out.mask.any() and (out.indices == -1).all() and (out.counts == 0).all()
    assert (out.points == 0).all() and out.dropped_nonfinite == 0
    out = proposal_point_pool([torch.zeros(0, 3, dtype=torch.float64), torch.rand(10, 3, dtype=torch.float64)],
                              torch.zeros(2, 0, 7), max_points=4, backend=backend)
    assert out.points.shape == (2, 0, 4, 3) and out.points.dtype == torch.float64
    assert out.counts.shape == (2, 0) and out.indices.shape == (2, 0, 4)
    # an empty frame among full ones pools nothing there
    pts, props = _scene(6, (300, 0, 300), 4)
    props[1] = props[0]
    out = proposal_point_pool(pts, props, max_points=4, backend=backend)
    assert (out.counts[1] == 0).all() and (out.counts[0] > 0).any()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_proposals_with_no_points_and_invalid_proposals(backend):
    pts, props = _scene(7, (500,), 5, dtype=torch.float64)
    props[0, 0, :2] = 1000.0  # far from every point
    props[0, 1, 0] = float("nan")
    props[0, 2, 3] = -1.0  # negative size
    props[0, 3, 5] = float("inf")
    out = proposal_point_pool(pts, props, max_points=6, backend=backend)
    assert (out.counts[0, :4] == 0).all() and not out.mask[0, :4].any()
    assert (out.points[0, :4] == 0).all() and (out.indices[0, :4] == -1).all()
    assert not torch.isnan(out.points).any()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_nonfinite_points_are_dropped_and_counted(backend):
    pts, props = _scene(8, (1500, 900), 8)
    clean = proposal_point_pool(pts, props, max_points=12, backend=backend)
    dirty = [p.clone() for p in pts]
    bad = {0: [3, 50, 700], 1: [0, 10]}
    for t, rows in bad.items():
        for j, r in enumerate(rows):
            dirty[t][r, j % 3] = [float("nan"), float("inf"), float("-inf")][j % 3]
    out = proposal_point_pool(dirty, props, max_points=12, backend=backend)
    assert out.dropped_nonfinite == 5 and clean.dropped_nonfinite == 0
    _same(out, proposal_point_pool_reference(dirty, props, max_points=12))
    bad_global = {3, 50, 700, 1500, 1510}
    assert not (set(out.indices[out.mask].tolist()) & bad_global)
    assert torch.isfinite(out.points).all()
    # the same as pooling the clean cloud without those rows (indices mapped back)
    keep = [torch.ones(len(p), dtype=torch.bool) for p in pts]
    for t, rows in bad.items():
        keep[t][rows] = False
    filt = proposal_point_pool([p[m] for p, m in zip(pts, keep)], props, max_points=12, backend=backend)
    back = torch.cat([torch.nonzero(m)[:, 0] + o for m, o in zip(keep, (0, 1500))])
    mapped = torch.where(filt.mask, back[filt.indices.clamp_min(0)], -1)
    assert torch.equal(mapped, out.indices) and torch.equal(filt.counts, out.counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("voxel_size", [None, (5.0, 5.0, 2.0), (1.0, 1.0, 1.0), (0.3, 0.7, 0.5)])
def test_points_exactly_on_the_cylinder_boundary(dtype, voxel_size):
    # box 6 x 8 (diagonal 10): radius 5; z from 0 to 2; yaw does not matter for the region
    props = torch.tensor([[[0.0, 0.0, 0.0, 6.0, 8.0, 2.0, 0.3]]], dtype=dtype)
    on = [[5, 0, 1], [-5, 0, 0], [0, 5, 2], [0, -5, 1], [3, 4, 0], [-3, -4, 2], [4, -3, 1], [0, 0, 0], [0, 0, 2]]
    out_ = [[5.001, 0, 1], [0, 0, 2.001], [0, 0, -0.001], [3, 4.001, 1], [-5.001, 0, 1], [3.6, 3.6, 1]]
    pts = torch.tensor(on + out_, dtype=dtype)
    for backend in ("cpu", "torch"):
        kw = {} if backend == "torch" else {"voxel_size": voxel_size}
        r = proposal_point_pool(pts, props, max_points=32, backend=backend, **kw)
        assert int(r.counts[0, 0]) == len(on)
        assert r.indices[0, 0, : len(on)].tolist() == list(range(len(on)))
        assert not r.mask[0, 0, len(on):].any()
    # a margin and a radius scale move the boundary
    r = proposal_point_pool(pts, props, max_points=32, z_margin=0.002, radius_scale=1.001)
    assert int(r.counts[0, 0]) == len(on) + 5


def test_voxel_size_does_not_change_the_result():
    pts, props = _scene(9, (2000, 1200), 11)
    ref = proposal_point_pool_reference(pts, props, max_points=20, seed=3)
    for vs in [None, (0.1, 0.1, 0.1), (100.0, 100.0, 100.0), (0.7, 1.3, 0.4), (1e-4, 1e-4, 1e6)]:
        _same(proposal_point_pool(pts, props, max_points=20, seed=3, voxel_size=vs, backend="cpu"), ref)


def test_far_points_and_huge_coordinates():
    pts, props = _scene(10, (600,), 4, dtype=torch.float64)
    far = torch.tensor([[1e12, -1e12, 0.0, 1.0], [3e30, 0.0, 0.0, 1.0], [-1e300, 1e300, 1e300, 1.0]],
                       dtype=torch.float64)
    pts = [torch.cat([pts[0], far])]
    props[0, 3] = torch.tensor([1e12, -1e12, -1.0, 4.0, 4.0, 4.0, 0.0], dtype=torch.float64)
    out = proposal_point_pool(pts, props, max_points=8)
    _same(out, proposal_point_pool_reference(pts, props, max_points=8))
    assert out.indices[0, 3, 0] == 600 and out.counts[0, 3] == 1


def test_noncontiguous_and_half_inputs():
    pts, props = _scene(11, (700, 500), 6, C=4)
    packed = torch.cat(pts)
    wide = torch.zeros(len(packed), 9)
    wide[:, ::2][:, :4] = packed  # a strided view
    view = wide[:, ::2][:, :4]
    assert not view.is_contiguous()
    props_nc = props.transpose(0, 1).contiguous().transpose(0, 1)
    assert not props_nc.is_contiguous()
    a = proposal_point_pool(view, props_nc, [0, 700, 1200], max_points=10)
    _same(a, proposal_point_pool(packed, props, [0, 700, 1200], max_points=10))
    h = proposal_point_pool(packed.half(), props, [0, 700, 1200], max_points=10)
    _same(h, proposal_point_pool_reference(packed.half(), props, [0, 700, 1200], max_points=10))
    assert h.points.dtype == torch.float16


def test_canonical_frame():
    yaw = math.pi / 2
    props = torch.tensor([[[10.0, -2.0, -1.0, 4.0, 2.0, 2.0, yaw]]], dtype=torch.float64)
    pts = torch.tensor([[10.0, -1.0, -0.5, 7.0], [11.0, -2.0, 0.0, 8.0], [50.0, 0.0, 0.0, 9.0]], dtype=torch.float64)
    out = proposal_point_pool(pts, props, max_points=4, canonical=True)
    torch.testing.assert_close(out.points[0, 0, :2], torch.tensor([[1.0, 0.0, 0.5, 7.0], [0.0, -1.0, 1.0, 8.0]],
                                                                  dtype=torch.float64))
    assert (out.points[0, 0, 2:] == 0).all()
    pts2, props2 = _scene(12, (900, 800), 7, dtype=torch.float64)
    _same(proposal_point_pool(pts2, props2, max_points=9, canonical=True),
          proposal_point_pool_reference(pts2, props2, max_points=9, canonical=True))
    raw = proposal_point_pool(pts2, props2, max_points=9)
    can = proposal_point_pool(pts2, props2, max_points=9, canonical=True)
    torch.testing.assert_close(can.points[..., :3].norm(dim=-1)[raw.mask],
                               (raw.points[..., :3] - props2[:, :, None, :3]).norm(dim=-1)[raw.mask])
    assert torch.equal(can.points[..., 3:], raw.points[..., 3:])


# ------------------------------------------------------------------------------------------------
# gradients and registration
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck_gather(seed):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(-1, 7, (2, 3, 4), generator=g)
    idx[0, 0, :2] = 5  # duplicates accumulate
    assert torch.autograd.gradcheck(lambda p: pp._gather_op(p, idx), (pts,))
    assert torch.autograd.gradgradcheck(lambda p: pp._gather_op(p, idx), (pts,))


@pytest.mark.parametrize("canonical", [False, True])
def test_gradients_match_reference_autograd(canonical):
    pts, props = _scene(13, (400, 300), 6, dtype=torch.float64)
    w = torch.randn(2, 6, 8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (proposal_point_pool, proposal_point_pool_reference):
        p = [x.clone().requires_grad_(True) for x in pts]
        b = props.clone().requires_grad_(True)
        (fn(p, b, max_points=8, canonical=canonical).points * w).sum().backward()
        grads.append(([x.grad for x in p], b.grad))
    for ga, gb in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(ga, gb)
    assert grads[0][0][0].abs().sum() > 0
    if canonical:
        torch.testing.assert_close(grads[0][1], grads[1][1])


def test_end_to_end_gradcheck_small():
    pts, props = _scene(14, (40,), 3, C=4, dtype=torch.float64, extent=3.0)
    p = pts[0].clone().requires_grad_(True)
    out = proposal_point_pool(p, props, max_points=5)
    assert out.mask.any()
    # the selection is fixed for small perturbations away from the boundary: check the values' gradient
    assert torch.autograd.gradcheck(lambda x: pp._gather_op(x, out.indices), (p,))


def test_opcheck():
    pts, props = _scene(15, (300, 200), 4)
    packed = torch.cat(pts)
    cyl = proposal_cylinders(props)
    off = torch.tensor([0, 300, 500])
    for sd in (-1, 4):
        torch.library.opcheck(pp._select_op, (packed, off, cyl, 8, [1.0, 1.0, 1.0], sd))
    idx, _, _ = pp._select_op(packed, off, cyl, 8, [1.0, 1.0, 1.0], -1)
    p64 = packed.double().requires_grad_(True)
    torch.library.opcheck(pp._gather_op, (p64, idx))
    g = torch.randn(*idx.shape, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(pp._gather_backward_op, (g, idx, packed.shape[0]))


def test_compile_runs():
    pts, props = _scene(16, (300,), 3)
    packed = torch.cat(pts)
    cyl = proposal_cylinders(props)
    off = torch.tensor([0, 300])

    def f(x):
        idx, cnt, _ = pp._select_op(x, off, cyl, 8, [1.0, 1.0, 1.0], -1)
        return pp._gather_op(x, idx).sum(-1), cnt

    eager = f(packed)
    comp = torch.compile(f, backend="eager", fullgraph=True)(packed)
    assert torch.equal(eager[0], comp[0]) and torch.equal(eager[1], comp[1])


def test_bad_inputs_name_the_argument():
    pts, props = _scene(17, (50, 60), 2)
    packed = torch.cat(pts)
    cases = [
        (lambda: proposal_point_pool(packed, props[0]), "proposals"),
        (lambda: proposal_point_pool(packed, props[..., :6]), "proposals"),
        (lambda: proposal_point_pool(packed, props), "proposals"),  # T=1 (no offsets) vs 2 sets
        (lambda: proposal_point_pool(packed[:, 0], props[:1]), "points"),
        (lambda: proposal_point_pool(packed[:, :2], props[:1]), "points"),
        (lambda: proposal_point_pool(packed.long(), props[:1]), "points"),
        (lambda: proposal_point_pool(packed, props, [0, 50, 111]), "frame_offsets"),
        (lambda: proposal_point_pool(packed, props, [0, 70, 60, 110]), "frame_offsets"),
        (lambda: proposal_point_pool(packed, props, torch.tensor([0.0, 50.0, 110.0])), "frame_offsets"),
        (lambda: proposal_point_pool(pts, props, [0, 50, 110]), "frame_offsets"),
        (lambda: proposal_point_pool([pts[0], pts[1][:, :3]], props), "points[1]"),
        (lambda: proposal_point_pool([], props), "points"),
        (lambda: proposal_point_pool(pts, props, max_points=0), "max_points"),
        (lambda: proposal_point_pool(pts, props, seed=-2), "seed"),
        (lambda: proposal_point_pool(pts, props, radius_scale=0.0), "radius_scale"),
        (lambda: proposal_point_pool(pts, props, z_margin=float("nan")), "z_margin"),
        (lambda: proposal_point_pool(pts, props, voxel_size=(1.0, 0.0, 1.0)), "voxel_size"),
        (lambda: proposal_point_pool(pts, props, voxel_size=(1.0, 1.0)), "voxel_size"),
        (lambda: proposal_point_pool(pts, props, backend="gpu"), "backend"),
        (lambda: proposal_point_pool(pts, props, backend="cuda"), "backend"),
    ]
    for fn, name in cases:
        with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
            fn()


# ------------------------------------------------------------------------------------------------
# real data and CUDA
# ------------------------------------------------------------------------------------------------

@pytest.mark.data
@pytest.mark.skipif(not KITTI.exists(), reason=f"KITTI sample sweep not present at {KITTI}")
def test_kitti_sweep_matches_reference():
    pts = torch.from_numpy(np.fromfile(KITTI, np.float32).reshape(-1, 4))
    g = torch.Generator().manual_seed(0)
    K = 24
    c = pts[torch.randint(len(pts), (K,), generator=g), :3]
    box = torch.cat([c[:, :2], c[:, 2:] - 0.8, torch.tensor([3.9, 1.6, 1.56]).expand(K, 3),
                     torch.rand(K, 1, generator=g) * 6.28], 1)
    props = torch.stack([box, box + torch.tensor([0.4, -0.2, 0, 0, 0, 0, 0])])
    frames = [pts, pts[::2] + torch.tensor([0.05, 0.0, 0.0, 0.0])]
    for seed in (None, 1):
        ours = proposal_point_pool(frames, props, seed=seed, backend="cpu")
        _same(ours, proposal_point_pool_reference(frames, props, seed=seed))
        assert (ours.counts > 0).float().mean() > 0.9


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [None, 9])
def test_cuda_matches_cpu(dtype, seed):
    pts, props = _scene(18, (3000, 0, 2000, 500), 13, dtype=dtype)
    pts[0][5, 1] = float("nan")
    cpu = proposal_point_pool(pts, props, max_points=16, seed=seed, backend="cpu", canonical=True)
    gpu = proposal_point_pool([p.cuda() for p in pts], props.cuda(), max_points=16, seed=seed, backend="cuda",
                              canonical=True)
    assert gpu.points.is_cuda
    assert torch.equal(gpu.indices.cpu(), cpu.indices) and torch.equal(gpu.counts.cpu(), cpu.counts)
    torch.testing.assert_close(gpu.points.cpu(), cpu.points)
    assert gpu.dropped_nonfinite == cpu.dropped_nonfinite == 1
    ref = proposal_point_pool([p.cuda() for p in pts], props.cuda(), max_points=16, seed=seed, backend="torch")
    assert torch.equal(ref.indices.cpu(), cpu.indices)
    # boundary points, on the GPU too
    bprops = torch.tensor([[[0.0, 0.0, 0.0, 6.0, 8.0, 2.0, 0.3]]], dtype=dtype, device="cuda")
    bpts = torch.tensor([[5, 0, 1], [3, 4, 0], [0, 0, 2], [5.001, 0, 1], [0, 0, 2.001]], dtype=dtype, device="cuda")
    r = proposal_point_pool(bpts, bprops, max_points=8, voxel_size=(5.0, 5.0, 2.0))
    assert r.indices[0, 0].tolist()[:4] == [0, 1, 2, -1] and int(r.counts[0, 0]) == 3
    # gradient through the gather on the GPU
    p = pts[2].cuda().double().requires_grad_(True)
    out = proposal_point_pool(p, props[2:3].cuda(), max_points=16)
    out.points.sum().backward()
    assert torch.equal(p.grad.sum(1).cpu() > 0,
                       torch.bincount(out.indices[out.mask].cpu(), minlength=len(p)) > 0)
