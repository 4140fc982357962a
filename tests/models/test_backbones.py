"""Backbones: MeanVFE averages what it should where it should; the sparse encoder down-samples 8x in
(x, y) order; height compression matches spconv's dense(); the BEV backbone + neck agree on sizes."""
from __future__ import annotations

import pytest
import torch

from perception.models.backbones.bev_backbone import SecondBackbone, SecondFPN
from perception.models.backbones.sparse_encoder import SparseEncoder, height_compression
from perception.models.backbones.vfe import MeanVFE

spconv = pytest.importorskip("spconv.pytorch")

# 4 x 3 x 2 voxels of 1 m (X, Y, Z)
GRID = dict(x_min=0.0, y_min=0.0, z_min=0.0, x_max=4.0, y_max=3.0, z_max=2.0, voxel_size=1.0)


def test_mean_vfe_matches_hand_computation():
    a = torch.tensor([[1.2, 2.1, 0.5, 0.2, 0.0],   # voxel (x=1, y=2, z=0)
                      [3.5, 0.5, 1.5, 0.9, 0.1],   # voxel (x=3, y=0, z=1)
                      [1.8, 2.9, 0.1, 0.6, 0.0],   # voxel (x=1, y=2, z=0) again: averaged with row 0
                      [9.0, 0.5, 0.5, 1.0, 0.0],   # outside x: ignored
                      [float("nan"), 0.5, 0.5, 1.0, 0.0]])  # non-finite: ignored
    b = torch.tensor([[0.5, 0.5, 1.5, 0.3, 0.05]])  # frame 1: voxel (x=0, y=0, z=1)
    vfe = MeanVFE(GRID, in_channels=5)
    assert vfe.sparse_shape == (2, 3, 4)
    feats, coords = vfe([a, b])
    assert coords.dtype == torch.int32
    # voxels sorted by (b, z, y, x)
    assert coords.tolist() == [[0, 0, 2, 1], [0, 1, 0, 3], [1, 1, 0, 0]]
    expected = torch.stack([(a[0] + a[2]) / 2, a[1], b[0]])
    torch.testing.assert_close(feats, expected)


def test_mean_vfe_checks_channels_and_passes_gradients():
    vfe = MeanVFE(GRID, in_channels=4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        vfe([torch.zeros(3, 5)])
    pts = torch.tensor([[1.2, 2.1, 0.5, 0.2], [1.8, 2.9, 0.1, 0.6]], requires_grad=True)
    feats, _ = vfe([pts])
    feats[:, 3].sum().backward()
    assert pts.grad[:, 3].tolist() == [0.5, 0.5]  # mean over the two points of the voxel


def _random_voxels(sparse_shape, n, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randint(0, batch_size, (n,), generator=g)]
                      + [torch.randint(0, s, (n,), generator=g) for s in sparse_shape], 1).int()
    idx = torch.unique(idx, dim=0)
    return torch.randn(len(idx), 4, generator=g), idx


def test_sparse_encoder_downsamples_8x_in_x_and_y():
    sparse_shape = (17, 48, 64)  # (Z, Y, X): z 17 -> 9 -> 5 -> 3, then conv_out -> 1
    enc = SparseEncoder(4, sparse_shape, channels=(4, 8, 8, 16), out_channels=16).eval()
    assert enc.bev_shape == (8, 6) and enc.out_depth == 1 and enc.bev_channels == 16
    feats, idx = _random_voxels(sparse_shape, 500, 2)
    with torch.no_grad():
        bev = enc(feats, idx, 2)
    assert bev.shape == (2, 16, 64 // 8, 48 // 8)  # [B, C*D, X/8, Y/8]

    # orientation: voxels only near (x=60, y=4) light up only BEV cells near (60/8, 4/8) = (7, 0)
    idx = torch.tensor([[0, z, y, x] for z in (7, 8) for y in (3, 4, 5) for x in (59, 60, 61)], dtype=torch.int32)
    torch.manual_seed(0)
    with torch.no_grad():
        bev = SparseEncoder(4, sparse_shape, channels=(4, 8, 8, 16), out_channels=16).eval()(
            torch.rand(len(idx), 4) + 0.5, idx, 1)
    lit = (bev[0].abs().sum(0) > 0).nonzero().tolist()
    assert lit and all(6 <= i <= 7 and 0 <= j <= 1 for i, j in lit), lit


def test_sparse_encoder_trains_on_cpu_and_rejects_flat_grids():
    sparse_shape = (20, 16, 16)
    enc = SparseEncoder(4, sparse_shape, channels=(4, 4, 8, 8), out_channels=8, momentum=0.1)
    assert enc.out_depth == 1  # 20 -> 10 -> 5 -> 3 -> 1
    feats, idx = _random_voxels(sparse_shape, 300, 1, seed=1)
    feats.requires_grad_(True)
    enc(feats, idx, 1).square().sum().backward()  # spconv's CPU backward (patched stream lookup)
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert enc.conv_input[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="z voxels"):
        SparseEncoder(4, (16, 16, 16))


def test_height_compression_matches_spconv_dense():
    feats, idx = _random_voxels((3, 5, 6), 60, 2, seed=2)
    x = spconv.SparseConvTensor(feats, idx, [3, 5, 6], 2)
    dense = x.dense()  # [B, C, D, Y, X]
    B, C, D, Y, X = dense.shape
    expected = dense.reshape(B, C * D, Y, X).permute(0, 1, 3, 2)
    torch.testing.assert_close(height_compression(feats, idx, 2, (3, 5, 6)), expected)


def test_second_backbone_and_fpn_sizes():
    bb = SecondBackbone(16, out_channels=(8, 16), layer_nums=(1, 1), strides=(1, 2))
    neck = SecondFPN(bb.out_channels, bb.strides, out_channels=(8, 8), upsample_strides=(2, 4))
    outs = bb(torch.randn(2, 16, 20, 12))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 20, 12), (2, 16, 10, 6)]
    assert neck.stride == 0.5 and neck(outs).shape == (2, 16, 40, 24)
    with pytest.raises(ValueError, match="agree"):
        SecondFPN((8, 16), (1, 2), (8, 8), (1, 1))
