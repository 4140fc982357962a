"""SparseEncoder: the SECOND / CenterPoint 3D sparse-convolution backbone, then height compression.

Yan, Mao & Li, "SECOND: Sparsely Embedded Convolutional Detection" (Sensors 2018) and CenterPoint's
voxel backbone (Yin et al., CVPR 2021; mmdet3d ``SparseEncoder`` with ``block_type="basicblock"``):

- ``conv_input``: SubMConv3d(in, c0) + BN + ReLU at full resolution;
- stage 0: ``blocks`` residual SubM blocks at ``c0``; stages 1-3: a SparseConv3d (kernel 3, stride 2,
  padding 1) to ``c_k``, then ``blocks`` residual SubM blocks — 8x down-sampling in x, y (and z);
- ``conv_out``: SparseConv3d kernel (3, 1, 1), stride (2, 1, 1) squeezes z further;
- height compression: ``dense()`` and z folded into channels → BEV ``[B, C_out * D, X/8, Y/8]``,
  permuted so that ``bev[b, :, i, j]`` is cell ``(i, j)`` along ``(x, y)`` (the :class:`BevGrid`
  convention; spconv itself indexes ``(z, y, x)``).

Paper widths: ``channels=(16, 32, 64, 128)``, ``out_channels=128``; smaller widths make a CPU model.
spconv is imported here, where it is used, never at package import.
"""
from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

__all__ = ["SparseEncoder", "SparseBasicBlock", "conv_out_size", "height_compression"]


def _cpu_safe_spconv_backward() -> None:
    """spconv 2.3's backward asks ``torch.cuda.current_stream()`` even for CPU tensors, which raises
    under a CPU-only torch (traveller59/spconv#366): there, hand it stream 0 (unused on CPU). With CUDA
    present nothing changes. Applied once, when this module is imported."""
    from spconv.pytorch import ops

    original = ops.get_current_stream
    if torch.cuda.is_available() or getattr(original, "_perception_cpu_safe", False):
        return

    def get_current_stream() -> int:
        return 0

    get_current_stream._perception_cpu_safe = True  # type: ignore[attr-defined]
    ops.get_current_stream = get_current_stream


_cpu_safe_spconv_backward()


def conv_out_size(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a (non-submanifold) convolution along one axis: spconv's formula."""
    return (n + 2 * padding - kernel) // stride + 1


def _bn(c: int, momentum: float) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=1e-3, momentum=momentum)


class SparseBasicBlock(spconv.SparseModule):
    """Residual block: SubM3x3 → BN → ReLU → SubM3x3 → BN, plus the input, then ReLU (``C → C``)."""

    def __init__(self, channels: int, indice_key: str, momentum: float = 0.01) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = _bn(channels, momentum)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = _bn(channels, momentum)
        self.relu = nn.ReLU()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(self.bn2(out.features) + identity))


class SparseEncoder(nn.Module):
    """Voxel features ``[M, C_in]`` at ``coords [M, 4]`` int32 ``(b, z, y, x)`` → BEV ``[B, out_channels * D, X/8, Y/8]``.

    ``sparse_shape`` is ``(Z, Y, X)`` voxels (``MeanVFE.sparse_shape``); ``channels`` the widths of the
    four stages; ``blocks`` residual blocks per stage; ``momentum`` the BatchNorm momentum (0.01 in
    the papers' configs; 0.1 converges faster for short runs). ``bev_shape`` / ``bev_channels`` say what
    comes out, so the 2D backbone can be sized from them.
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], channels: Sequence[int] = (16, 32, 64, 128),
                 out_channels: int = 128, blocks: int = 1, momentum: float = 0.01) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"SparseEncoder: channels must give 4 stage widths, got {tuple(channels)}")
        self.sparse_shape = tuple(int(s) for s in sparse_shape)  # (Z, Y, X)
        if len(self.sparse_shape) != 3:
            raise ValueError(f"SparseEncoder: sparse_shape must be (Z, Y, X), got {self.sparse_shape}")
        c = [int(x) for x in channels]
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, c[0], 3, padding=1, bias=False, indice_key="subm0"),
            _bn(c[0], momentum), nn.ReLU())
        stages = []
        for k in range(4):
            layers = []
            if k > 0:
                layers += [spconv.SparseConv3d(c[k - 1], c[k], 3, stride=2, padding=1, bias=False, indice_key=f"spconv{k}"),
                           _bn(c[k], momentum), nn.ReLU()]
            layers += [SparseBasicBlock(c[k], f"subm{k}", momentum) for _ in range(blocks)]
            stages.append(spconv.SparseSequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(c[3], out_channels, (3, 1, 1), stride=(2, 1, 1), bias=False, indice_key="spconv_down2"),
            _bn(out_channels, momentum), nn.ReLU())
        Z, Y, X = self.sparse_shape
        for _ in range(3):
            Z, Y, X = (conv_out_size(n, 3, 2, 1) for n in (Z, Y, X))
        Z = conv_out_size(Z, 3, 2, 0)
        if Z < 1:
            raise ValueError(f"SparseEncoder: {self.sparse_shape[0]} z voxels are too few for 4 z down-samplings "
                             "(need >= 17); use a smaller z voxel or a taller range")
        self.channels = tuple(c)
        self.out_channels = int(out_channels)
        self.out_depth = Z
        self.bev_shape = (X, Y)  # (i along x, j along y)
        self.bev_channels = self.out_channels * Z
        self.stride = 8

    def forward(self, feats: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = spconv.SparseConvTensor(feats, coords.int(), list(self.sparse_shape), batch_size)
        x = self.conv_input(x)
        for stage in self.stages:
            x = stage(x)
        x = self.conv_out(x)
        return height_compression(x.features, x.indices, batch_size, x.spatial_shape)


def height_compression(feats: torch.Tensor, indices: torch.Tensor, batch_size: int, spatial_shape) -> torch.Tensor:
    """Sparse ``feats [M, C]`` at ``indices [M, 4] (b, z, y, x)`` on ``spatial_shape (D, Y, X)`` → ``[B, C * D, X, Y]``.

    Channel ``c * D + z`` holds channel ``c`` of level ``z`` (mmdet3d's ``dense().view(B, C * D, Y, X)``
    order), then ``(y, x)`` are swapped to ``(x, y)``. Empty cells are zero.
    """
    D, Y, X = (int(s) for s in spatial_shape)
    C = feats.shape[1]
    b, z, y, x = indices.long().unbind(1)
    dense = feats.new_zeros(batch_size, X, Y, C, D)
    dense[b, x, y, :, z] = feats  # [B, X, Y, C, D]
    return dense.reshape(batch_size, X, Y, C * D).permute(0, 3, 1, 2).contiguous()  # [B, C*D, X, Y]
