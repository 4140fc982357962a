"""Colours shared by the renderings."""
from __future__ import annotations

import numpy as np

CLASS_COLORS = {
    "Car": (255, 158, 0), "car": (255, 158, 0), "Vehicle": (255, 158, 0), "vehicle": (255, 158, 0),
    "Pedestrian": (0, 200, 255), "pedestrian": (0, 200, 255),
    "Cyclist": (220, 20, 220), "bicycle": (220, 20, 220), "motorcycle": (220, 20, 220),
    "truck": (255, 99, 71), "bus": (255, 69, 0), "trailer": (255, 140, 0),
    "Truck": (255, 99, 71), "Van": (255, 200, 80), "Tram": (180, 120, 60), "Person_sitting": (0, 150, 200),
    "construction_vehicle": (233, 150, 70), "barrier": (112, 128, 144), "traffic_cone": (47, 79, 79),
    # BEV map classes (GaussianFusion's Gaussians; vehicle and pedestrian above)
    "background": (70, 70, 70), "road": (120, 120, 160), "walkway": (80, 160, 120), "centerline": (240, 230, 80),
    "static_object": (170, 110, 70),
}
PLAN_COLOR = (60, 255, 120)  # a planner's chosen trajectory
CANDIDATE_COLOR = (150, 150, 150)  # its other scored candidates
DEFAULT_COLOR = (200, 200, 200)


def class_color(name: str) -> tuple[int, int, int]:
    return CLASS_COLORS.get(name, DEFAULT_COLOR)


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scalars ``[N]`` → RGB ``[N, 3]`` uint8 along a turbo-like ramp (blue → green → yellow → red)."""
    t = np.clip((np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
    return (np.stack([r, g, b], axis=1) * 255).astype(np.uint8)