"""A synthetic frame as a NAVSIM-style planning scene, to score plans with the PDM score.

Everything moves into the ego frame at the frame's time ``t_k``: the objects' boxes over the next
4.9 s at 10 Hz (the PDM score's 4 s rollout plus TTC's 0.9 s look-ahead), the drivable ground as a
raster, the route's lane centre line and the logged (expert) future. Parked cars are vehicles that
do not move (nuPlan treats them as agents); buildings, poles and tree trunks are static objects.
"""
from __future__ import annotations

import numpy as np

from perception.eval.pdms import DT, STEPS, AgentClass, EgoGeometry, EgoStatus, PlanningScene
from perception.geometry import se3
from perception.geometry.grid import BevGrid
from perception.sim import world as W
from perception.sim.scene import (
    EGO_REAR_OVERHANG, EGO_SIZE, FUTURE_DT, FUTURE_STEPS, SimSequence, _relative_poses, _relative_xyh,
)
from perception.structures import Trajectory

EGO_GEOMETRY = EgoGeometry(EGO_SIZE[0], EGO_SIZE[1], EGO_REAR_OVERHANG, wheelbase=2.9)
PLANNING_GRID = BevGrid(-50.0, -100.0, 110.0, 100.0, 0.25)  # ego frame; 4 s at 14 m/s is ~56 m
AGENT_STEPS = STEPS + 9  # 4.9 s
_CLASS = {W.CAR: AgentClass.VEHICLE, W.PEDESTRIAN: AgentClass.PEDESTRIAN, W.CYCLIST: AgentClass.CYCLIST}


def _footprint(s: W.StaticObject) -> tuple[float, float, float, float, float]:
    """(x, y, yaw, l, w) of the largest part of a static object that starts below the ego's roof
    (a car's body, a tree's trunk rather than its crown)."""
    parts = [p for p in W._parts((s.x, s.y, 0.0, *s.size, s.yaw), s.cls) if p[2] < EGO_SIZE[2]]
    x, y, _, l, w, _, yaw = max(parts, key=lambda p: p[3] * p[4])
    return x, y, yaw, l, w


def planning_scene(seq: SimSequence, k: int, grid: BevGrid = PLANNING_GRID, max_range: float = 100.0) -> PlanningScene:
    """The planning scene of frame ``k`` of ``seq``; objects farther than ``max_range`` m throughout are left out."""
    t = seq.time(k)
    ego_from_world = se3.inverse(seq.world_from_ego(t))
    times = t + DT * np.arange(AGENT_STEPS)
    tracks, classes = [], []  # world (x, y, heading) [T, 3] and (l, w) per object
    for s in seq.world.static:
        x, y, yaw, l, w = _footprint(s)
        tracks.append((np.tile([x, y, yaw], (AGENT_STEPS, 1)), (l, w)))
        classes.append(_CLASS.get(s.cls, AgentClass.STATIC))
    for a in seq.world.agents:
        tracks.append((a.pose(times), a.size[:2]))
        classes.append(_CLASS[a.cls])
    n = len(tracks)
    poses = np.stack([p for p, _ in tracks], axis=1) if n else np.zeros((AGENT_STEPS, 0, 3))  # [T, N, 3]
    poses = _relative_xyh(ego_from_world, poses.reshape(-1, 3)).reshape(AGENT_STEPS, n, 3)
    size = np.broadcast_to(np.array([sz for _, sz in tracks]).reshape(1, n, 2), (AGENT_STEPS, n, 2))
    near = (np.linalg.norm(poses[..., :2], axis=-1) <= max_range).any(axis=0)
    agents = np.concatenate([poses, size], axis=-1)[:, near]

    cells = grid.cell_centers().reshape(-1, 2)
    world_xy = se3.transform_points(se3.inverse(ego_from_world), np.column_stack([cells, np.zeros(len(cells))]))
    drivable = np.isin(seq.world.ground.lookup(world_xy[:, :2]), W.DRIVABLE).reshape(grid.shape)

    route = seq.world.route
    s_now = float(np.interp(t, seq.motion.times, seq.motion.s))
    window = (route.s >= s_now - 30.0) & (route.s <= s_now + 200.0)
    centerline = _relative_xyh(ego_from_world, np.column_stack([route.xy[window], route.heading[window]]))[:, :2]

    future_t = t + FUTURE_DT * np.arange(1, FUTURE_STEPS + 1)
    expert = Trajectory(_relative_poses(ego_from_world, seq.world_from_ego(future_t)), future_t - t)
    x, y, h, v, acc, yaw_rate = seq.ego_states[k]
    return PlanningScene(
        ego=EgoStatus(float(v), float(acc), float(yaw_rate)), ego_geometry=EGO_GEOMETRY,
        agents=agents, agent_valid=np.ones(agents.shape[:2], bool),
        agent_class=np.array(classes, np.int64)[near], drivable=drivable, grid=grid,
        centerline=centerline, expert=expert, token=f"sim{seq.seed:05d}_{k:04d}",
    )
