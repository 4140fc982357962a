"""SECOND's 2D BEV backbone and its FPN-like neck, as CenterPoint uses them.

Yan, Mao & Li, "SECOND" (Sensors 2018); mmdet3d's ``SECOND`` + ``SECONDFPN``. CenterPoint's voxel
model: ``layer_nums=(5, 5)``, ``strides=(1, 2)``, ``out_channels=(128, 256)``; neck
``upsample_strides=(1, 2)``, ``out_channels=(256, 256)`` → one map at the encoder's resolution.

- :class:`SecondBackbone`: stages of ``Conv3x3(stride) + BN + ReLU`` then ``layers`` more
  ``Conv3x3 + BN + ReLU``; returns every stage's output ``[B, C_k, H / S_k, W / S_k]`` with
  ``S_k = strides[0] * ... * strides[k]``.
- :class:`SecondFPN`: each stage up-sampled by ``upsample_strides[k]`` (transposed conv, kernel =
  stride) to a common size, BN + ReLU, concatenated → ``[B, sum(out_channels), H / S_0 * u_0, ...]``.
  Sizes must agree: ``S_k / u_k`` equal for every ``k`` (checked).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SecondBackbone", "SecondFPN"]


def _conv(cin: int, cout: int, stride: int = 1, momentum: float = 0.01) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=momentum), nn.ReLU()]


class SecondBackbone(nn.Module):
    """``[B, in_channels, H, W]`` → ``list`` of ``[B, out_channels[k], H / S_k, W / S_k]``.

    ``momentum``: BatchNorm momentum (0.01 in the papers' configs; 0.1 settles faster in short runs).
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int] = (128, 256), layer_nums: Sequence[int] = (5, 5),
                 strides: Sequence[int] = (1, 2), momentum: float = 0.01) -> None:
        super().__init__()
        if not len(out_channels) == len(layer_nums) == len(strides):
            raise ValueError(f"SecondBackbone: out_channels {out_channels}, layer_nums {layer_nums} and strides "
                             f"{strides} must have one entry per stage")
        cin, blocks = in_channels, []
        for cout, n, s in zip(out_channels, layer_nums, strides):
            layers = _conv(cin, cout, s, momentum)
            for _ in range(n):
                layers += _conv(cout, cout, 1, momentum)
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(int(c) for c in out_channels)
        self.strides = tuple(int(s) for s in strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SecondFPN(nn.Module):
    """Stage outputs of :class:`SecondBackbone` → one map ``[B, sum(out_channels), H', W']``.

    ``in_strides`` are the backbone's per-stage strides (``SecondBackbone.strides``); ``stride``
    tells how much smaller the output is than the backbone input (may be < 1: up-sampled).
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], out_channels: Sequence[int] = (256, 256),
                 upsample_strides: Sequence[int] = (1, 2), momentum: float = 0.01) -> None:
        super().__init__()
        if not len(in_channels) == len(in_strides) == len(out_channels) == len(upsample_strides):
            raise ValueError("SecondFPN: in_channels, in_strides, out_channels, upsample_strides need one entry per stage")
        total, ratios, deblocks = 1, [], []
        for cin, s, cout, u in zip(in_channels, in_strides, out_channels, upsample_strides):
            total *= int(s)
            ratios.append(total / int(u))
            deblocks.append(nn.Sequential(nn.ConvTranspose2d(cin, cout, int(u), int(u), bias=False),
                                          nn.BatchNorm2d(cout, eps=1e-3, momentum=momentum), nn.ReLU()))
        if len(set(ratios)) != 1:
            raise ValueError(f"SecondFPN: stages come out at strides {ratios} (cumulative stride / upsample); "
                             "they must agree")
        self.deblocks = nn.ModuleList(deblocks)
        self.out_channels = int(sum(out_channels))
        self.stride = ratios[0]

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([d(f) for d, f in zip(self.deblocks, feats)], 1)
