"""Depth maps as pictures: inverse depth on the shared colour ramp (near red, far blue), no depth black."""
from __future__ import annotations

import numpy as np

from perception.structures.depth import DepthMap
from perception.viz.colors import colormap


def depth_to_rgb(depth: DepthMap | np.ndarray, min_depth: float = 1.0, max_depth: float = 80.0) -> np.ndarray:
    """``depth [H, W]`` metres (0 = none) → ``[H, W, 3]`` uint8: ``1 / depth`` over ``[1/max, 1/min]``, black where 0."""
    d = np.asarray(depth.depth if isinstance(depth, DepthMap) else depth, np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth_to_rgb: expected [H, W], got shape {d.shape}")
    ok = np.isfinite(d) & (d > 0)
    inv = np.where(ok, 1.0 / np.clip(np.where(ok, d, 1.0), min_depth, max_depth), 0.0)
    rgb = colormap(inv.ravel(), 1.0 / max_depth, 1.0 / min_depth).reshape(d.shape + (3,))
    rgb[~ok] = 0
    return rgb


def save_depth_png(path, depth: DepthMap | np.ndarray, min_depth: float = 1.0, max_depth: float = 80.0) -> None:
    """Write the colourised depth to ``path`` (PNG)."""
    from PIL import Image

    Image.fromarray(depth_to_rgb(depth, min_depth, max_depth)).save(path)
