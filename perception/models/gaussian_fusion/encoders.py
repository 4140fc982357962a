"""Plain-PyTorch image and LiDAR-BEV encoders for GaussianFusion (no torchvision on this machine).

The paper uses a ResNet-34 for both (TransFuser's backbones); these are ResNet-style stacks of
basic blocks whose width and depth the config sets, so the small CPU config and the paper-size one
are the same code.
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs, BatchNorm, a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(blocks - 1)))


class PyramidEncoder(nn.Module):
    """``[N, cin, H, W]`` → ``levels`` maps ``[N, dim, H / s, W / s]``, strides ``s = 2^(k+2)`` from 4.

    A stride-2 stem and one stage per level (the first at stride 4); each level projected to ``dim``.
    """

    def __init__(self, cin: int, widths: tuple[int, ...], dim: int, blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        chans = (widths[0],) + tuple(widths)
        self.stages = nn.ModuleList(_stage(chans[i], chans[i + 1], blocks, 2) for i in range(len(widths)))
        self.proj = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage, proj in zip(self.stages, self.proj):
            x = stage(x)
            out.append(proj(x))
        return out
