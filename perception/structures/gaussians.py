"""BEV Gaussians (GaussianFusion's scene representation) and a planner's full output."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.structures.pose import Plan


@dataclass(frozen=True)
class BevGaussians:
    """``G`` 2-D Gaussians on the ground plane (ego frame).

    means ``[G, 2]`` (m), scales ``[G, 2]`` standard deviations (m), rotations ``[G]`` (rad, first axis
    from +x), opacities ``[G]`` in [0, 1], labels ``[G]`` int64 into ``class_names`` (the argmax of the
    semantic logits).
    """

    means: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    opacities: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        g = len(self.means)
        for name, want in (("means", (g, 2)), ("scales", (g, 2)), ("rotations", (g,)), ("opacities", (g,)),
                           ("labels", (g,))):
            if np.shape(getattr(self, name)) != want:
                raise ValueError(f"BevGaussians.{name}: expected shape {want}, got {np.shape(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.means)


@dataclass(frozen=True)
class PlanningOutput:
    """What an end-to-end planner returns per frame: the plan, and the scene it planned in (if it has one).

    ``bev_semantic [nx, ny]`` uint8 is the rendered map (class indices into ``gaussians.class_names``).
    ``missing`` names the sensors the frame lacked (the plan was made without them).
    """

    plan: Plan
    gaussians: BevGaussians | None = None
    bev_semantic: np.ndarray | None = None
    missing: tuple[str, ...] = ()
