"""Camera overlays: LiDAR points coloured by depth and 3D box edges, projected through the calibration.

Box edges are sampled densely before projection so they bend correctly through fisheye models.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from perception.geometry.boxes import BOX_EDGES
from perception.structures import Boxes3D, Calibration
from perception.viz.colors import class_color, colormap

EDGE_SAMPLES = 16


def render_camera(
    image: np.ndarray,
    calib: Calibration,
    camera: str,
    points: np.ndarray | None = None,
    points_frame: str = "ego",
    boxes: Boxes3D | None = None,
    max_depth: float = 60.0,
    names: list[str] | None = None,
) -> np.ndarray:
    """``image [H, W, 3]`` uint8 with ``points [N, >=3]`` (in ``points_frame``) and ``boxes`` drawn on it.

    ``names`` (one per box) pick the box colours; default: the boxes' class names.
    """
    canvas = np.array(image, dtype=np.uint8, copy=True)
    if points is not None and len(points):
        p = np.asarray(points, dtype=np.float64)[:, :3]
        p = p[np.isfinite(p).all(axis=1)]
        uv, depth, valid = calib.project(p, camera, source=points_frame)
        valid &= depth > 0.5
        order = np.argsort(-depth[valid])  # far first, near on top
        px = np.round(uv[valid][order]).astype(np.int64)
        colors = colormap(depth[valid][order], 0.0, max_depth)
        h, w = canvas.shape[:2]
        for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):  # 2x2 dots
            u, v = px[:, 0] + du, px[:, 1] + dv
            ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
            canvas[v[ok], u[ok]] = colors[ok]
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    if boxes is not None and len(boxes):
        corners = boxes.corners()  # [N, 8, 3]
        t = np.linspace(0.0, 1.0, EDGE_SAMPLES)[:, None]
        names = names if names is not None else boxes.names
        for i, c in enumerate(corners):
            color = class_color(names[i])
            for a, b in BOX_EDGES:
                seg = c[a] * (1 - t) + c[b] * t  # [S, 3]
                uv, depth, valid = calib.project(seg, camera, source=boxes.frame_id)
                valid &= depth > 0.5  # segments grazing the camera plane project to infinity
                for k in range(EDGE_SAMPLES - 1):
                    if valid[k] and valid[k + 1]:
                        draw.line([tuple(uv[k]), tuple(uv[k + 1])], fill=color, width=2)
    return np.asarray(pil)


def box_image_rects(calib: Calibration, camera: str, boxes: Boxes3D) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned image rectangles ``[N, 4]`` (x1, y1, x2, y2) enclosing each box's projected corners.

    Returns the rectangles (clipped to the image) and ``ok [N]``: all 8 corners in front of the camera.
    """
    model = calib.cameras[camera]
    corners = boxes.corners().reshape(-1, 3)
    uv, depth, _ = calib.project(corners, camera, source=boxes.frame_id)
    uv = uv.reshape(-1, 8, 2)
    ok = (depth.reshape(-1, 8) > 0.1).all(axis=1)
    rects = np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1)
    rects[:, [0, 2]] = rects[:, [0, 2]].clip(0, model.width - 1)
    rects[:, [1, 3]] = rects[:, [1, 3]].clip(0, model.height - 1)
    return rects, ok
