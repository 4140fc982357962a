"""Bird's-eye-view rendering of a point cloud with 3D boxes, BEV Gaussians and a plan (x forward = up in the picture)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from perception.structures import BevGaussians, Boxes3D, Plan
from perception.viz.colors import CANDIDATE_COLOR, PLAN_COLOR, class_color, colormap


def render_bev(
    points: np.ndarray,
    boxes: Boxes3D | None = None,
    xy_range: tuple[float, float, float, float] = (-40.0, -40.0, 80.0, 40.0),
    resolution: float = 0.1,
    z_range: tuple[float, float] | None = None,
    scores: np.ndarray | None = None,
    names: list[str] | None = None,
    gaussians: BevGaussians | None = None,
    plan: Plan | None = None,
) -> np.ndarray:
    """``points [N, >=3]`` (ego frame), ``boxes``, ``gaussians`` and ``plan`` → ``[H, W, 3]`` uint8.

    ``xy_range`` is ``(x_min, y_min, x_max, y_max)`` in metres; the image has +x up and +y left,
    like looking down on the car from above with the car facing up. Points are coloured by height
    over ``z_range`` (default: 4 m up from the ground, taken as the 2nd percentile of z),
    boxes by ``names`` (one per box; default: the boxes' class names). Gaussians are their 2σ ellipses
    in class colours, blended by opacity, under the boxes; the plan is a thick line from the ego with
    a dot per waypoint, over faint lines for its candidates.
    """
    x0, y0, x1, y1 = xy_range
    w, h = int(round((y1 - y0) / resolution)), int(round((x1 - x0) / resolution))
    img = np.full((h, w, 3), 16, dtype=np.uint8)
    p = np.asarray(points, dtype=np.float64)[:, :3]
    p = p[np.isfinite(p).all(axis=1)]
    col = ((y1 - p[:, 1]) / resolution).astype(np.int64)
    row = ((x1 - p[:, 0]) / resolution).astype(np.int64)
    keep = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    if z_range is None:
        ground = float(np.percentile(p[:, 2], 2)) if len(p) else 0.0
        z_range = (ground, ground + 4.0)
    order = np.argsort(p[keep, 2])  # draw high points last
    img[row[keep][order], col[keep][order]] = colormap(p[keep, 2][order], *z_range)

    pil = Image.fromarray(img)
    if gaussians is not None and len(gaussians):
        _draw_gaussians(pil, gaussians, x1, y1, resolution)
    draw = ImageDraw.Draw(pil)
    # range rings every 10 m around the ego
    for r in range(10, int(max(abs(x0), abs(x1), abs(y0), abs(y1))) + 1, 10):
        cx, cy = (y1 - 0) / resolution, (x1 - 0) / resolution
        draw.ellipse([cx - r / resolution, cy - r / resolution, cx + r / resolution, cy + r / resolution], outline=(48, 48, 48))
    if boxes is not None and len(boxes):
        corners = boxes.corners()[:, :4, :2]  # bottom face [N, 4, 2]
        names = names if names is not None else boxes.names
        for i, c in enumerate(corners):
            pix = [((y1 - y) / resolution, (x1 - x) / resolution) for x, y in c]
            color = class_color(names[i])
            draw.polygon(pix, outline=color, width=2)
            front = ((pix[1][0] + pix[2][0]) / 2, (pix[1][1] + pix[2][1]) / 2)  # corners 1-2: the front face
            centre = tuple(np.mean(pix, axis=0))
            draw.line([centre, front], fill=color, width=2)
            if scores is not None:
                draw.text((pix[0][0] + 2, pix[0][1] + 2), f"{scores[i]:.2f}", fill=color)
    # the ego car
    ex, ey = (y1 - 0) / resolution, (x1 - 0) / resolution
    draw.polygon([(ex, ey - 25), (ex - 9, ey + 10), (ex + 9, ey + 10)], fill=(255, 255, 255))
    if plan is not None:
        def pixels(poses: np.ndarray) -> list[tuple[float, float]]:  # from the ego origin
            xy = np.vstack([np.zeros((1, 2)), np.asarray(poses, np.float64)[:, :2]])
            return [((y1 - y) / resolution, (x1 - x) / resolution) for x, y in xy]

        for c in plan.candidates:
            draw.line(pixels(c.poses), fill=CANDIDATE_COLOR, width=1)
        pix = pixels(plan.trajectory.poses)
        draw.line(pix, fill=PLAN_COLOR, width=4, joint="curve")
        for u, v in pix[1:]:
            draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=PLAN_COLOR, outline=(0, 0, 0))
    return np.asarray(pil)


def _draw_gaussians(pil: Image.Image, g: BevGaussians, x1: float, y1: float, resolution: float,
                    max_alpha: float = 0.6, segments: int = 24) -> None:
    """Each Gaussian's 2σ ellipse, filled in its class colour with alpha ``max_alpha * opacity``, blended in."""
    draw = ImageDraw.Draw(pil, "RGBA")  # RGBA fills blend into the RGB image
    a = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    circle = np.stack([np.cos(a), np.sin(a)], 1)  # [S, 2]
    for i in np.argsort(np.asarray(g.opacities)):  # most opaque last
        c, s = np.cos(g.rotations[i]), np.sin(g.rotations[i])
        xy = g.means[i] + (2 * circle * g.scales[i]) @ np.array([[c, s], [-s, c]])  # [S, 2] ego frame
        pix = [((y1 - y) / resolution, (x1 - x) / resolution) for x, y in xy]
        alpha = int(round(255 * max_alpha * float(np.clip(g.opacities[i], 0.0, 1.0))))
        draw.polygon(pix, fill=(*class_color(g.class_names[int(g.labels[i])]), alpha))
