"""Dynamic scatter (perception/ops/scatter.py) against the torch reference, with gradients."""
from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
import torch

from perception.ops.scatter import (_scatter_backward_op, _scatter_op, dynamic_scatter,
                                    dynamic_scatter_reference)

KITTI = Path(__file__).resolve().parents[2].parent / "shared/data/kitti/training/velodyne/000001.bin"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
needs_kitti = pytest.mark.skipif(not KITTI.exists(), reason=f"KITTI sweep not present at {KITTI}")
REDUCES = ("mean", "max", "sum")


def _inputs(seed: int, n: int, C: int, dtype=torch.float32, extent=(3, 5, 7), ignored: float = 0.1):
    """Random features and coords in a small grid (so voxels hold several points), a fraction of rows -1
    (and a few rows with a single negative entry, also ignored)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, C, generator=g, dtype=torch.float64).to(dtype)
    coors = torch.stack([torch.randint(0, e, (n,), generator=g) for e in extent], 1).to(torch.int32)
    drop = torch.rand(n, generator=g) < ignored
    coors[drop] = -1
    if n > 10:
        coors[3, 1] = -2
    return feats, coors


def _check_forward(ours, ref, dtype):
    of, oc, op = ours
    rf, rc, rp = ref
    assert of.dtype == dtype and oc.dtype == torch.int32 and op.dtype == torch.int64
    assert torch.equal(oc, rc) and torch.equal(op, rp)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(of, rf, **tol)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run under 1 and (where numba has them) 2 threads: chunk boundaries split voxels' runs."""
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    before = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(before)


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,C,extent", [(2000, 16, (3, 5, 7)), (500, 3, (40, 1, 90)), (64, 1, (1, 1, 1)),
                                        (3, 5, (2, 2, 2))])
def test_cpu_matches_reference(reduce, dtype, n, C, extent, threads):
    feats, coors = _inputs(n + C, n, C, dtype, extent)
    ours = dynamic_scatter(feats, coors, reduce, backend="cpu")
    _check_forward(ours, dynamic_scatter_reference(feats, coors, reduce), dtype)


def test_voxel_order_and_point2voxel():
    coors = torch.tensor([[1, 0, 0], [0, 2, 1], [-1, -1, -1], [0, 0, 5], [1, 0, 0], [0, 2, 1], [0, 0, 4]],
                         dtype=torch.int32)
    feats = torch.arange(7.0)[:, None].repeat(1, 2)
    out, vco, p2v = dynamic_scatter(feats, coors, "mean")
    assert vco.tolist() == [[0, 0, 4], [0, 0, 5], [0, 2, 1], [1, 0, 0]]  # sorted by (z, y, x)
    assert p2v.tolist() == [3, 2, -1, 1, 3, 2, 0]
    assert out[:, 0].tolist() == [6.0, 3.0, 3.0, 2.0]
    assert dynamic_scatter(feats, coors, "sum")[0][:, 0].tolist() == [6.0, 3.0, 6.0, 4.0]
    assert dynamic_scatter(feats, coors, "max")[0][:, 0].tolist() == [6.0, 3.0, 5.0, 4.0]


def test_empty_and_all_ignored():
    for n in (0, 5):
        feats = torch.randn(n, 4)
        coors = torch.full((n, 3), -1, dtype=torch.int32)
        for backend in ("cpu", "torch"):
            out, vco, p2v = dynamic_scatter(feats, coors, "mean", backend=backend)
            assert out.shape == (0, 4) and vco.shape == (0, 3) and vco.dtype == torch.int32
            assert p2v.shape == (n,) and (p2v == -1).all()


def test_non_contiguous_int64_coors_and_half():
    feats, coors = _inputs(4, 800, 12)
    nc = feats.t().contiguous().t()[:, 1::2]
    assert not nc.is_contiguous()
    for reduce in REDUCES:
        _check_forward(dynamic_scatter(nc, coors.long(), reduce), dynamic_scatter_reference(nc, coors, reduce),
                       torch.float32)
    h = dynamic_scatter(feats.half(), coors, "mean")
    assert h[0].dtype == torch.float16
    torch.testing.assert_close(h[0].float(), dynamic_scatter_reference(feats.half().float(), coors)[0],
                               rtol=2e-3, atol=2e-3)


def test_large_keys_fall_back():
    feats, coors = _inputs(6, 300, 4, extent=(5, 3000, 3000))  # 5 * 3000 * 3000 > 2^31 keys
    coors[:, 0] *= 200_000
    for reduce in REDUCES:
        _check_forward(dynamic_scatter(feats, coors, reduce), dynamic_scatter_reference(feats, coors, reduce),
                       torch.float32)


def test_nan_features_propagate():
    feats, coors = _inputs(7, 200, 3, extent=(2, 2, 2), ignored=0.0)
    feats[5, 1] = float("nan")
    for reduce in REDUCES:
        ours = dynamic_scatter(feats, coors, reduce)[0]
        ref = dynamic_scatter_reference(feats, coors, reduce)[0]
        torch.testing.assert_close(ours, ref, equal_nan=True, rtol=1e-5, atol=1e-5)
        assert ours[:, 1].isnan().sum() == 1


def test_independent_of_thread_count():
    feats, coors = _inputs(8, 5000, 8, extent=(10, 30, 30))
    before = numba.get_num_threads()
    try:
        outs = []
        for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(t)
            outs.append(dynamic_scatter(feats, coors, "mean"))
    finally:
        numba.set_num_threads(before)
    for o in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, outs[0]))


def test_bad_arguments():
    feats, coors = _inputs(1, 10, 2)
    with pytest.raises(ValueError, match="feats"):
        dynamic_scatter(feats[:, 0], coors)
    with pytest.raises(ValueError, match="coors"):
        dynamic_scatter(feats, coors[:, :2])
    with pytest.raises(ValueError, match="coors"):
        dynamic_scatter(feats, coors[:5])
    with pytest.raises(ValueError, match="coors"):
        dynamic_scatter(feats, coors.float())
    with pytest.raises(ValueError, match="reduce"):
        dynamic_scatter(feats, coors, "min")
    with pytest.raises(ValueError, match="backend"):
        dynamic_scatter(feats, coors, backend="gpu")


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcheck(reduce, seed):
    feats, coors = _inputs(seed, 40, 3, torch.float64, extent=(2, 2, 3))
    feats.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: dynamic_scatter(f, coors, reduce, backend="cpu")[0], (feats,))


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_matches_reference(reduce, dtype, threads):
    feats, coors = _inputs(3, 1500, 8, dtype, extent=(4, 6, 6))
    w = torch.randn(len(torch.unique(coors[(coors >= 0).all(1)], dim=0)), 8, dtype=dtype)
    grads = []
    for fn in (lambda f: dynamic_scatter(f, coors, reduce, backend="cpu"),
               lambda f: dynamic_scatter_reference(f, coors, reduce)):
        f = feats.clone().requires_grad_(True)
        (fn(f)[0] * w).sum().backward()
        grads.append(f.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_max_grad_ties_go_to_first_point():
    coors = torch.tensor([[0, 0, 0]] * 4 + [[-1, -1, -1]] + [[0, 0, 1]] * 2, dtype=torch.int32)
    feats = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [0.0, 5.0], [9.0, 9.0], [7.0, 7.0], [7.0, 7.0]],
                         requires_grad=True)
    for backend in ("cpu", "torch"):
        f = feats.detach().clone().requires_grad_(True)
        dynamic_scatter(f, coors, "max", backend=backend)[0].sum().backward()
        assert f.grad.tolist() == [[0, 1], [1, 0], [0, 0], [0, 0], [0, 0], [1, 1], [0, 0]], backend


def test_opcheck():
    feats, coors = _inputs(2, 200, 4, extent=(2, 3, 4))
    for reduce in REDUCES:
        torch.library.opcheck(_scatter_op, (feats.double().requires_grad_(True), coors, reduce))
    out, _, p2v, counts = _scatter_op(feats, coors, "max")
    torch.library.opcheck(_scatter_backward_op, (torch.randn_like(out), feats, out, p2v, counts, "max"))
    torch.library.opcheck(_scatter_backward_op, (torch.randn_like(out), feats, out, p2v, counts, "mean"))


@needs_kitti
def test_kitti_sweep_matches_reference():
    from perception.ops.voxelize import dynamic_voxelize

    pts = torch.from_numpy(np.fromfile(KITTI, dtype=np.float32).reshape(-1, 4))
    coors = dynamic_voxelize(pts, [0.1, 0.1, 0.15], [-75.2, -75.2, -5.0, 75.2, 75.2, 3.1])
    feats = torch.randn(len(pts), 16, generator=torch.Generator().manual_seed(0))
    for reduce in REDUCES:
        _check_forward(dynamic_scatter(feats, coors, reduce), dynamic_scatter_reference(feats, coors, reduce),
                       torch.float32)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(reduce, dtype):
    feats, coors = _inputs(11, 20000, 16, dtype, extent=(8, 40, 40))
    ref = dynamic_scatter(feats, coors, reduce, backend="cpu")
    out = dynamic_scatter(feats.cuda(), coors.cuda(), reduce)
    _check_forward(tuple(t.cpu() for t in out), ref, dtype)
    w = torch.randn_like(ref[0])
    grads = []
    for f, c in ((feats, coors), (feats.cuda(), coors.cuda())):
        f = f.clone().requires_grad_(True)
        (dynamic_scatter(f, c, reduce)[0] * w.to(f.device)).sum().backward()
        grads.append(f.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
