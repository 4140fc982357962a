"""Hard and dynamic voxelization (perception/ops/voxelize.py) against the torch reference and the peers."""
from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
import torch

import perception.ops.voxelize as voxelize_module
from perception.ops.voxelize import (Voxels, _dynamic_voxelize_op, _voxelize_op, dynamic_voxelize,
                                     dynamic_voxelize_reference, grid_geometry, voxelize, voxelize_reference)

KITTI = Path(__file__).resolve().parents[2].parent / "shared/data/kitti/training/velodyne/000001.bin"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
needs_kitti = pytest.mark.skipif(not KITTI.exists(), reason=f"KITTI sweep not present at {KITTI}")

VS = (0.5, 0.5, 0.4)
PCR = (-4.0, -3.0, -1.0, 4.0, 3.0, 1.0)  # grid 16 x 12 x 5


def _cloud(seed: int, n: int, C: int = 4, dtype=torch.float32) -> torch.Tensor:
    """Points in and around PCR (about a fifth outside), clustered so voxels hold several points, with
    duplicated rows, points exactly on cell and range boundaries, and NaN / inf rows."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, C, generator=g, dtype=torch.float64)
    lo = torch.tensor(PCR[:3], dtype=torch.float64)
    hi = torch.tensor(PCR[3:], dtype=torch.float64)
    p[:, :3] = lo - 0.1 * (hi - lo) + p[:, :3] * 1.2 * (hi - lo)
    if n >= 20:
        k = n // 5
        p[k:2 * k, :3] = p[:k, :3] + 0.01 * torch.randn(k, 3, generator=g, dtype=torch.float64)  # clusters
        p[2 * k:2 * k + k // 4] = p[:k // 4]  # exact duplicates
        m = n // 10  # exactly on cell boundaries (and on the range's min / max faces)
        cells = torch.randint(0, 17, (m, 3), generator=g).double()
        p[n - m:, :3] = lo + cells * torch.tensor(VS, dtype=torch.float64)
        p[n - 3, 0] = float("nan")
        p[n - 2, 1] = float("inf")
        p[n - 1, 2] = -float("inf")
    return p.to(dtype)


def _same(a: Voxels, b: Voxels) -> None:
    assert a.voxels.shape == b.voxels.shape and a.voxels.dtype == b.voxels.dtype
    assert torch.equal(a.coords, b.coords) and a.coords.dtype == torch.int32
    assert torch.equal(a.num_points, b.num_points) and a.num_points.dtype == torch.int32
    torch.testing.assert_close(a.voxels, b.voxels, rtol=0, atol=0, equal_nan=True)
    assert (a.dropped_nonfinite, a.dropped_out_of_range, a.dropped_over_capacity) == (
        b.dropped_nonfinite, b.dropped_out_of_range, b.dropped_over_capacity)


def _loop_voxelize(points: torch.Tensor, P: int, max_voxels: int | None):
    """The textbook loop (mmcv / spconv CPU): coords, num_points and point indices per voxel."""
    vs, lo, grid = grid_geometry(VS, PCR)
    x = points.numpy()
    lo_a, vs_a = np.asarray(lo, x.dtype), np.asarray(vs, x.dtype)
    seen: dict[tuple, int] = {}
    coords, members = [], []
    for i, p in enumerate(x):
        if not np.isfinite(p[:3]).all():
            continue
        c = np.floor((p[:3] - lo_a) / vs_a)
        if ((c < 0) | (c >= grid)).any():
            continue
        key = (int(c[2]), int(c[1]), int(c[0]))
        if key not in seen:
            if max_voxels is not None and len(seen) >= max_voxels:
                continue
            seen[key] = len(seen)
            coords.append(key)
            members.append([])
        members[seen[key]].append(i)
    return coords, [m[:P] for m in members]


# ------------------------------------------------------------------------------------------------
# hard voxelization
# ------------------------------------------------------------------------------------------------

@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, monkeypatch):
    """Run under 1 and (where numba has them) 2 threads: the kernels take different paths (with 2, the
    partitioned hard kernel, which otherwise only runs past ``_SERIAL_MAX`` points)."""
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    if request.param > 1:
        monkeypatch.setattr(voxelize_module, "_SERIAL_MAX", 0)
    before = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,C,P,max_voxels", [(3000, 4, 5, None), (1000, 3, 1, None), (2500, 5, 8, 40),
                                              (40, 4, 3, 0), (1, 4, 2, None)])
def test_cpu_matches_reference(dtype, n, C, P, max_voxels, threads):
    pts = _cloud(n + C + P, n, C, dtype)
    ours = voxelize(pts, VS, PCR, P, max_voxels, backend="cpu")
    ref = voxelize_reference(pts, VS, PCR, P, max_voxels)
    _same(ours, ref)
    assert ours.dropped_nonfinite + ours.dropped_out_of_range + ours.dropped_over_capacity + int(
        ours.num_points.sum()) == n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_matches_textbook_loop(dtype):
    pts = _cloud(3, 1500, 4, dtype)
    for P, mv in [(4, None), (2, 25)]:
        ref = voxelize_reference(pts, VS, PCR, P, mv)
        coords, members = _loop_voxelize(pts, P, mv)
        assert ref.coords.tolist() == [list(c) for c in coords]
        assert ref.num_points.tolist() == [len(m) for m in members]
        for v, m in enumerate(members):
            assert torch.equal(ref.voxels[v, :len(m)], pts[m])
            assert not ref.voxels[v, len(m):].any()


def test_first_points_in_input_order_and_voxel_order():
    pts = torch.tensor([[0.1, 0.1, 0.1, 1], [-3.9, 0.1, 0.1, 2], [0.2, 0.2, 0.15, 3], [0.3, 0.3, 0.12, 4],
                        [-3.8, 0.2, 0.1, 5], [0.4, 0.4, 0.05, 6]])
    out = voxelize(pts, VS, PCR, max_points_per_voxel=2)
    assert out.coords.tolist() == [[2, 6, 8], [2, 6, 0]]  # (z, y, x), by first occurrence
    assert out.num_points.tolist() == [2, 2]
    assert out.voxels[0, :, 3].tolist() == [1, 3] and out.voxels[1, :, 3].tolist() == [2, 5]
    assert out.dropped_over_capacity == 2
    capped = voxelize(pts, VS, PCR, max_points_per_voxel=2, max_voxels=1)
    assert capped.coords.tolist() == [[2, 6, 8]] and capped.dropped_over_capacity == 4


def test_boundaries_exact():
    # x on the min face -> cell 0; one voxel below max -> last cell; on the max face -> out of range
    pts = torch.tensor([[-4.0, 0.0, 0.0], [3.5, 0.0, 0.0], [4.0, 0.0, 0.0], [-4.0000005, 0.0, 0.0],
                        [0.0, -3.0, -1.0], [0.0, 2.9, 0.9]])
    out = voxelize(pts, VS, PCR, max_points_per_voxel=1)
    assert out.coords.tolist() == [[2, 6, 0], [2, 6, 15], [0, 0, 8], [4, 11, 8]]
    assert out.dropped_out_of_range == 2
    expected = [[2, 6, 0], [2, 6, 15], [-1, -1, -1], [-1, -1, -1], [0, 0, 8], [4, 11, 8]]
    assert dynamic_voxelize(pts, VS, PCR).tolist() == expected


def test_range_not_a_multiple_of_voxel_size():
    vs, lo, grid = grid_geometry((0.3, 0.3, 0.3), (0, 0, 0, 1.0, 1.0, 1.0))
    assert grid == (3, 3, 3)  # round(3.33): the partial last cell is not part of the grid
    out = voxelize(torch.tensor([[0.95, 0.1, 0.1]]), (0.3, 0.3, 0.3), (0, 0, 0, 1.0, 1.0, 1.0))
    assert len(out) == 0 and out.dropped_out_of_range == 1


def test_nonfinite_counted():
    pts = _cloud(5, 500)
    pts[:7, 0] = float("nan")
    pts[7:9, 2] = float("inf")
    pts[9, 3] = float("nan")  # a NaN feature column is carried, not dropped
    out = voxelize(pts, VS, PCR)
    ref = voxelize_reference(pts, VS, PCR)
    _same(out, ref)
    assert out.dropped_nonfinite == 9 + 3  # + the 3 non-finite rows _cloud plants
    coors, nf, oor = dynamic_voxelize(pts, VS, PCR, return_dropped=True)
    assert nf == 12 and oor == out.dropped_out_of_range
    assert dynamic_voxelize(pts, VS, PCR, backend="torch", return_dropped=True)[1:] == (nf, oor)


def test_empty_and_all_dropped():
    for pts in (torch.zeros(0, 4), torch.full((5, 4), 100.0), torch.full((3, 4), float("nan"))):
        for backend in ("cpu", "torch"):
            out = voxelize(pts, VS, PCR, 5, backend=backend)
            assert out.voxels.shape == (0, 5, 4) and out.voxels.dtype == torch.float32
            assert out.coords.shape == (0, 3) and out.num_points.shape == (0,)
            coors = dynamic_voxelize(pts, VS, PCR, backend=backend)
            assert coors.shape == (len(pts), 3) and coors.dtype == torch.int32 and (coors == -1).all()


def test_non_contiguous_and_half():
    pts = _cloud(8, 1200, 6)
    nc = pts.t().contiguous().t()[:, ::2]  # non-contiguous [N, 3] view
    assert not nc.is_contiguous()
    _same(voxelize(nc, VS, PCR, 4), voxelize_reference(nc.contiguous(), VS, PCR, 4))
    assert torch.equal(dynamic_voxelize(nc, VS, PCR), dynamic_voxelize_reference(nc.contiguous(), VS, PCR))
    h = pts.half()
    out = voxelize(h, VS, PCR, 4)
    assert out.voxels.dtype == torch.float16
    _same(out, voxelize_reference(h, VS, PCR, 4))


@pytest.mark.parametrize("serial_max", [0, 1 << 19], ids=["partitioned", "serial"])
def test_independent_of_thread_count(serial_max, monkeypatch):
    monkeypatch.setattr(voxelize_module, "_SERIAL_MAX", serial_max)
    pts = _cloud(9, 5000)
    before = numba.get_num_threads()
    try:
        outs = []
        for t in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            outs.append(voxelize(pts, VS, PCR, 3, 60))
    finally:
        numba.set_num_threads(before)
    for o in outs[1:]:
        _same(o, outs[0])


def test_bad_arguments():
    pts = _cloud(1, 10)
    with pytest.raises(ValueError, match="points"):
        voxelize(pts[:, :2], VS, PCR)
    with pytest.raises(ValueError, match="points"):
        voxelize(pts.long(), VS, PCR)
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(pts, (0.1, 0.0, 0.1), PCR)
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(pts, (0.1, 0.1), PCR)
    with pytest.raises(ValueError, match="point_cloud_range"):
        voxelize(pts, VS, (0, 0, 0, -1, 1, 1))
    with pytest.raises(ValueError, match="max_points_per_voxel"):
        voxelize(pts, VS, PCR, 0)
    with pytest.raises(ValueError, match="max_voxels"):
        voxelize(pts, VS, PCR, 5, -3)
    with pytest.raises(ValueError, match="backend"):
        voxelize(pts, VS, PCR, backend="gpu")
    with pytest.raises(ValueError, match="backend='cuda'"):
        dynamic_voxelize(pts, VS, PCR, backend="cuda")


# ------------------------------------------------------------------------------------------------
# dynamic voxelization
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,C", [(2000, 4), (33, 3), (0, 5)])
def test_dynamic_matches_reference(dtype, n, C, threads):
    pts = _cloud(n + C, n, C, dtype)
    ours = dynamic_voxelize(pts, VS, PCR, backend="cpu")
    assert ours.dtype == torch.int32 and ours.shape == (n, 3)
    assert torch.equal(ours, dynamic_voxelize_reference(pts, VS, PCR))
    hard = voxelize(pts, VS, PCR, max_points_per_voxel=n + 1)
    valid = ours[(ours >= 0).all(1)]
    assert torch.equal(torch.unique(valid, dim=0), torch.unique(hard.coords, dim=0))


# ------------------------------------------------------------------------------------------------
# registration, peers, CUDA
# ------------------------------------------------------------------------------------------------

def test_opcheck():
    pts = _cloud(2, 300)
    torch.library.opcheck(_voxelize_op, (pts, list(VS), list(PCR), 4, -1))
    torch.library.opcheck(_voxelize_op, (pts.double(), list(VS), list(PCR), 2, 10))
    torch.library.opcheck(_dynamic_voxelize_op, (pts, list(VS), list(PCR)))


def test_matches_spconv_and_mmcv_synthetic():
    spconv_utils = pytest.importorskip("spconv.pytorch.utils")
    ops = pytest.importorskip("mmcv.ops")
    pts = _cloud(4, 4000)
    pts = pts[torch.isfinite(pts).all(1)]  # the peers' floor(NaN) -> int is undefined behaviour
    ours = voxelize(pts, VS, PCR, 5)
    v, c, n = spconv_utils.PointToVoxel(list(VS), list(PCR), 4, len(pts), 5)(pts)
    assert torch.equal(ours.coords, c) and torch.equal(ours.num_points, n) and torch.equal(ours.voxels, v)
    v, c, n = ops.Voxelization(list(VS), list(PCR), 5, len(pts))(pts)
    assert torch.equal(ours.coords, c) and torch.equal(ours.num_points, n) and torch.equal(ours.voxels, v)
    assert torch.equal(dynamic_voxelize(pts, VS, PCR), ops.Voxelization(list(VS), list(PCR), -1, -1)(pts))


@needs_kitti
def test_matches_spconv_and_mmcv_on_kitti():
    spconv_utils = pytest.importorskip("spconv.pytorch.utils")
    ops = pytest.importorskip("mmcv.ops")
    pts = torch.from_numpy(np.fromfile(KITTI, dtype=np.float32).reshape(-1, 4))
    vs, pcr = [0.1, 0.1, 0.15], [-75.2, -75.2, -5.0, 75.2, 75.2, 3.1]
    ours = voxelize(pts, vs, pcr, 5)
    v, c, n = spconv_utils.PointToVoxel(vs, pcr, 4, len(pts), 5)(pts)
    assert len(ours) == 61641
    assert torch.equal(ours.coords, c) and torch.equal(ours.num_points, n) and torch.equal(ours.voxels, v)
    sub = pts[:20000]  # mmcv's CPU hard voxelization takes ~0.4 s on the whole sweep
    ours = voxelize(sub, vs, pcr, 5)
    v, c, n = ops.Voxelization(vs, pcr, 5, len(sub))(sub)
    assert torch.equal(ours.coords, c) and torch.equal(ours.num_points, n) and torch.equal(ours.voxels, v)
    assert torch.equal(dynamic_voxelize(pts, vs, pcr), ops.Voxelization(vs, pcr, -1, -1)(pts))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    pts = _cloud(12, 20000, 4, dtype)
    for P, mv in [(5, None), (3, 100)]:
        ref = voxelize(pts, VS, PCR, P, mv, backend="cpu")
        out = voxelize(pts.cuda(), VS, PCR, P, mv)
        _same(Voxels(out.voxels.cpu(), out.coords.cpu(), out.num_points.cpu(), out.dropped_nonfinite,
                     out.dropped_out_of_range, out.dropped_over_capacity), ref)
    coors, nf, oor = dynamic_voxelize(pts.cuda(), VS, PCR, return_dropped=True)
    assert torch.equal(coors.cpu(), dynamic_voxelize(pts, VS, PCR))
    assert (nf, oor) == dynamic_voxelize(pts, VS, PCR, return_dropped=True)[1:]
    empty = voxelize(pts[:0].cuda(), VS, PCR, 5)
    assert empty.voxels.shape == (0, 5, 4)
