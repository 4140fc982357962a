"""NAVSIM v1's PDM score (PDMS) for a planned trajectory, non-reactive.

Dauner et al., "NAVSIM: Data-Driven Non-Reactive Autonomous Vehicle Simulation and Benchmarking",
NeurIPS 2024 Datasets & Benchmarks; the sub-metrics re-implement nuPlan's closed-loop metrics as
in PDM-Closed (Dauner et al., "Parting with Misconceptions about Learning-based Vehicle Motion
Planning", CoRL 2023). The plan (8 poses at 2 Hz over 4 s, current ego frame) is tracked by a
kinematic bicycle model at 10 Hz (41 states, t = 0..4 s) and the rollout is scored:

    PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12

- **NC**, no at-fault collision: 0 after an at-fault collision with a vehicle, pedestrian or
  cyclist, 0.5 with a static object, else 1. nuPlan's classes: ego stopped (<= 0.05 m/s): not at
  fault; the other stopped (or static): at fault; the other's centre more than 150° off the ego's
  heading seen from its rear axle (a rear-end): not at fault; front or lateral: at fault. An
  object met without fault is ignored from then on.
- **DAC**: every corner of the ego box on drivable ground at every step.
- **TTC**: 0 when, from any step with the ego moving, its box moved on at constant velocity
  (heading fixed) for 0, 0.3, 0.6, 0.9 s (NAVSIM's steps) meets an object at that later time that
  lies ahead (within 30° of the heading), or not behind while the ego is off the drivable area.
- **EP**: progress of the box centre along the route centreline, over a reference progress,
  in [0, 1]; 1 when the larger of the two is under 5 m.
- **C**: the rollout stays within nuPlan's comfort bounds (Savitzky-Golay filtered as in NAVSIM's
  ``pdm_comfort_metrics``): longitudinal acceleration in (-4.05, 2.40) m/s², |lateral acceleration|
  < 4.89 m/s², |jerk magnitude| < 8.37 m/s³, |longitudinal jerk| < 4.13 m/s³, |yaw rate| < 0.95
  rad/s, |yaw acceleration| < 1.93 rad/s².

Deviations from NAVSIM, all because this runs on scenes without nuPlan maps:
- EP's reference is the expert's logged 4 s progress (NAVSIM: the best PDM-Closed proposal).
- A lateral collision is always at fault (nuPlan: only while the ego straddles lanes or is off
  the drivable area); TTC knows no intersection polygons (NAVSIM also blames "not behind" there).
- The tracker is speed feedback + pure pursuit with first-order actuator lags (NAVSIM: LQR);
  lateral acceleration is the rear axle's centripetal ``v * yaw_rate``.
- The drivable area is a raster (:class:`~perception.geometry.grid.BevGrid`), not polygons;
  object speeds come from their boxes' motion; objects past the last given step hold still.
- No driving-direction compliance (weight 0 in NAVSIM v1 anyway) and no traffic lights.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Sequence

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.signal import savgol_filter

from perception.geometry.boxes import box_corners
from perception.geometry.grid import BevGrid
from perception.structures import Trajectory

DT = 0.1  # s, rollout step
HORIZON = 4.0  # s
STEPS = int(round(HORIZON / DT)) + 1  # 41 states, t = 0..4 s


class AgentClass(IntEnum):
    VEHICLE = 0
    PEDESTRIAN = 1
    CYCLIST = 2
    STATIC = 3  # a static object (pole, building, ...): an at-fault collision scores NC = 0.5


@dataclass(frozen=True)
class EgoStatus:
    """The ego now: speed (m/s), longitudinal acceleration (m/s²), yaw rate (rad/s)."""

    speed: float
    acceleration: float = 0.0
    yaw_rate: float = 0.0


@dataclass(frozen=True)
class EgoGeometry:
    """The ego box (``length`` x ``width``); its origin, the rear axle, lies ``rear_overhang`` m ahead of the rear."""

    length: float
    width: float
    rear_overhang: float
    wheelbase: float

    def boxes(self, poses: np.ndarray) -> np.ndarray:
        """Rear-axle poses ``[..., 3]`` → boxes ``[..., 5]`` (cx, cy, heading, length, width)."""
        reach = self.length / 2 - self.rear_overhang
        h = poses[..., 2]
        c = poses[..., :2] + reach * np.stack([np.cos(h), np.sin(h)], axis=-1)
        size = np.broadcast_to([self.length, self.width], h.shape + (2,))
        return np.concatenate([c, h[..., None], size], axis=-1)


@dataclass(frozen=True)
class PlanningScene:
    """What a plan is scored against, all in the ego frame at t = 0 (x forward, y left, rear axle origin).

    ``agents [T, N, 5]`` (cx, cy, heading, length, width) at ``t = 0, 0.1, ..., (T-1) 0.1`` s with
    ``T >= 41`` (TTC looks up to 0.9 s past the 4 s horizon; later steps reuse the last),
    ``agent_valid [T, N]``, ``agent_class [N]`` (:class:`AgentClass`), ``drivable [nx, ny]`` bool on
    ``grid``, the route ``centerline [M, 2]`` and the ``expert`` (logged) trajectory.
    """

    ego: EgoStatus
    ego_geometry: EgoGeometry
    agents: np.ndarray
    agent_valid: np.ndarray
    agent_class: np.ndarray
    drivable: np.ndarray
    grid: BevGrid
    centerline: np.ndarray
    expert: Trajectory
    token: str = ""

    def __post_init__(self) -> None:
        a = np.asarray(self.agents, np.float64).reshape(len(self.agents), -1, 5)
        t, n = a.shape[:2]
        if t < STEPS:
            raise ValueError(f"PlanningScene.agents: need >= {STEPS} steps at {DT} s, got {t}")
        valid = np.asarray(self.agent_valid, bool)
        cls = np.asarray(self.agent_class, np.int64).reshape(-1)
        if valid.shape != (t, n) or cls.shape != (n,):
            raise ValueError(f"PlanningScene: agent_valid {valid.shape} / agent_class {cls.shape} "
                             f"do not match agents {a.shape}")
        drivable = np.asarray(self.drivable, bool)
        if drivable.shape != self.grid.shape:
            raise ValueError(f"PlanningScene.drivable: shape {drivable.shape}, grid {self.grid.shape}")
        line = np.asarray(self.centerline, np.float64)
        if line.ndim != 2 or line.shape[1] != 2 or len(line) < 2:
            raise ValueError(f"PlanningScene.centerline: expected [M >= 2, 2], got {line.shape}")
        for name, v in (("agents", a), ("agent_valid", valid), ("agent_class", cls),
                        ("drivable", drivable), ("centerline", line)):
            object.__setattr__(self, name, v)


@dataclass(frozen=True)
class PDMConfig:
    """Weights and thresholds (NAVSIM v1 / nuPlan defaults) and the tracker's vehicle model."""

    progress_weight: float = 5.0
    ttc_weight: float = 5.0
    comfort_weight: float = 2.0
    progress_threshold: float = 5.0  # m: below it EP = 1
    ttc_steps: tuple[int, ...] = (0, 3, 6, 9)  # rollout steps looked ahead (NAVSIM)
    ttc_stopped_speed: float = 5e-3  # m/s: a stopped ego has no TTC infraction
    collision_stopped_speed: float = 5e-2  # m/s: ego / object "stopped" in a collision
    ahead_deg: float = 30.0
    behind_deg: float = 150.0
    # comfort bounds (nuPlan)
    lon_accel: tuple[float, float] = (-4.05, 2.40)
    max_lat_accel: float = 4.89
    max_jerk: float = 8.37
    max_lon_jerk: float = 4.13
    max_yaw_rate: float = 0.95
    max_yaw_accel: float = 1.93
    # tracker
    accel_limits: tuple[float, float] = (-8.0, 4.0)  # m/s²
    max_steer: float = 0.6  # rad
    accel_time_constant: float = 0.2  # s (nuPlan's bicycle model)
    steer_time_constant: float = 0.05  # s
    speed_gain: float = 1.5  # 1/s: acceleration per m/s of speed error
    position_gain: float = 0.6  # 1/s²: acceleration per m of arclength error
    lookahead: tuple[float, float] = (3.0, 0.6)  # pure pursuit: L = max(a, b * v) metres


@dataclass(frozen=True)
class PDMResult:
    """One plan's sub-scores; ``progress`` and ``reference_progress`` in metres."""

    nc: float
    dac: float
    ttc: float
    ep: float
    comfort: float
    pdms: float
    progress: float
    reference_progress: float


# --- rollout ---------------------------------------------------------------------------------------
def reference_poses(plan: Trajectory, horizon: float = HORIZON) -> np.ndarray:
    """The plan with the current pose prepended, through a cubic spline in time at ``DT``: ``[41, 3]``."""
    if plan.timestamps[0] <= 0 or plan.timestamps[-1] < horizon - 1e-6:
        raise ValueError(f"reference_poses: plan times must lie in (0, >= {horizon}] s, got {plan.timestamps}")
    t = np.concatenate([[0.0], plan.timestamps])
    p = np.concatenate([np.zeros((1, 3)), plan.poses])
    p[:, 2] = np.unwrap(p[:, 2])
    return CubicSpline(t, p)(np.arange(STEPS) * DT)


def _arclength(xy: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])


def project(line: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Arclength ``[K]`` along the polyline ``line [M, 2]`` of the nearest point to each of ``points [K, 2]``."""
    a, d = line[:-1], np.diff(line, axis=0)  # [M-1, 2]
    u = np.clip(np.einsum("kmi,mi->km", points[:, None] - a, d) / np.maximum((d * d).sum(1), 1e-12), 0, 1)
    dist = np.linalg.norm(a + u[..., None] * d - points[:, None], axis=-1)  # [K, M-1]
    m = dist.argmin(axis=1)
    return _arclength(line)[m] + u[np.arange(len(points)), m] * np.linalg.norm(d[m], axis=1)


def simulate(plan: Trajectory, ego: EgoStatus, geometry: EgoGeometry, config: PDMConfig = PDMConfig()) -> np.ndarray:
    """Track ``plan`` from ``ego`` with a kinematic bicycle model: states ``[41, 6]``
    (x, y, heading, speed, acceleration, yaw rate) of the rear axle at ``t = 0, 0.1, ..., 4`` s.

    Longitudinal: the plan's acceleration (feed-forward) plus feedback on the speed error and on
    the arclength error against where the plan is at that time; lateral: pure pursuit on the
    plan's path (extended straight past its end). Commands pass first-order lags and limits.
    """
    ref = reference_poses(plan)
    end_dir = np.array([np.cos(ref[-1, 2]), np.sin(ref[-1, 2])])
    path = np.concatenate([ref[:, :2], ref[-1:, :2] + np.outer([50.0, 100.0], end_dir)])
    keep = np.concatenate([[True], np.linalg.norm(np.diff(path, axis=0), axis=1) > 1e-6])
    path = path[keep]
    s_path = _arclength(path)
    s_ref = _arclength(ref[:, :2])  # [41] where the plan is at each step
    v_ref = np.gradient(s_ref, DT)
    a_ref = np.gradient(v_ref, DT)
    wb = geometry.wheelbase
    x = y = h = 0.0
    v, a = max(float(ego.speed), 0.0), float(ego.acceleration)
    steer = float(np.arctan(wb * ego.yaw_rate / v)) if v > 0.1 else 0.0
    steer = float(np.clip(steer, -config.max_steer, config.max_steer))
    k_a = 1 - np.exp(-DT / config.accel_time_constant)
    k_d = 1 - np.exp(-DT / config.steer_time_constant)
    out = np.zeros((STEPS, 6))
    out[0] = (x, y, h, v, a, v * np.tan(steer) / wb)
    for i in range(1, STEPS):
        s_now = float(project(path, np.array([[x, y]]))[0])
        a_cmd = a_ref[i - 1] + config.speed_gain * (v_ref[i - 1] - v) + config.position_gain * (s_ref[i - 1] - s_now)
        a += k_a * (np.clip(a_cmd, *config.accel_limits) - a)
        look = max(config.lookahead[0], config.lookahead[1] * v)
        tx, ty = np.interp(s_now + look, s_path, path[:, 0]), np.interp(s_now + look, s_path, path[:, 1])
        alpha = np.arctan2(ty - y, tx - x) - h
        steer_cmd = np.arctan2(2 * wb * np.sin(alpha), look)
        steer += k_d * (np.clip(steer_cmd, -config.max_steer, config.max_steer) - steer)
        v_new = max(v + a * DT, 0.0)
        a_eff = (v_new - v) / DT
        v_mid = 0.5 * (v + v_new)
        yaw_rate = v_mid * np.tan(steer) / wb
        h_mid = h + 0.5 * yaw_rate * DT
        x, y, h = x + v_mid * np.cos(h_mid) * DT, y + v_mid * np.sin(h_mid) * DT, h + yaw_rate * DT
        v = v_new
        if v == 0.0:
            a = max(a, 0.0)  # a stopped car does not roll backwards
        out[i] = (x, y, h, v, a_eff, yaw_rate)
    return out


# --- sub-metrics -----------------------------------------------------------------------------------
def _corners(boxes: np.ndarray) -> np.ndarray:
    """Boxes ``[..., 5]`` (cx, cy, heading, l, w) → footprint corners ``[..., 4, 2]``
    (rear-right, front-right, front-left, rear-left)."""
    flat = boxes.reshape(-1, 5)
    rows = np.column_stack([flat[:, :2], np.zeros(len(flat)), flat[:, 3:5], np.ones(len(flat)), flat[:, 2]])
    return box_corners(rows)[:, :4, :2].reshape(boxes.shape[:-1] + (4, 2))


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Separating-axis test of convex polygons ``a [..., P, 2]`` and ``b [..., Q, 2]`` (batch dims
    broadcast; P = 2 is a segment): ``[...]`` True where they touch or overlap."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    edges = np.concatenate([np.roll(a, -1, axis=-2) - a, np.roll(b, -1, axis=-2) - b], axis=-2)
    axes = np.stack([-edges[..., 1], edges[..., 0]], axis=-1)  # edge normals [..., P + Q, 2]
    pa = np.einsum("...kd,...pd->...kp", axes, a)
    pb = np.einsum("...kd,...qd->...kq", axes, b)
    return ((pa.max(-1) >= pb.min(-1)) & (pb.max(-1) >= pa.min(-1))).all(-1)


def _angle_off(pose: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """|angle| between the heading of ``pose [3]`` and the direction from it to ``xy [..., 2]``."""
    d = xy - pose[:2]
    return np.abs(np.angle(np.exp(1j * (np.arctan2(d[..., 1], d[..., 0]) - pose[2]))))


def _agent_speeds(agents: np.ndarray) -> np.ndarray:
    """``[T, N]`` speed of each object from its centre's motion (m/s)."""
    return np.linalg.norm(np.gradient(agents[..., :2], DT, axis=0), axis=-1)


def on_drivable(corners: np.ndarray, scene: PlanningScene) -> np.ndarray:
    """``corners [T, 4, 2]`` → ``[T]`` bool: all four on drivable cells (off the grid is not drivable)."""
    ij, inside = scene.grid.index(corners.reshape(-1, 2))
    ok = inside.copy()
    ok[inside] = scene.drivable[ij[inside, 0], ij[inside, 1]]
    return ok.reshape(corners.shape[:-1]).all(axis=-1)


def no_at_fault_collision(states: np.ndarray, corners: np.ndarray, scene: PlanningScene,
                          config: PDMConfig = PDMConfig()) -> float:
    """NC from rollout ``states [41, 6]`` and ego ``corners [41, 4, 2]``."""
    objects = _corners(scene.agents[:STEPS])  # [41, N, 4, 2]
    hit = _overlap(corners[:, None], objects) & scene.agent_valid[:STEPS]  # [41, N]
    speeds = _agent_speeds(scene.agents)
    behind = np.deg2rad(config.behind_deg)
    score, met = 1.0, set()
    for t, n in zip(*np.nonzero(hit)):  # in time order
        if n in met:
            continue
        ego_stopped = states[t, 3] <= config.collision_stopped_speed
        static = scene.agent_class[n] == AgentClass.STATIC
        other_stopped = static or speeds[t, n] <= config.collision_stopped_speed
        rear = _angle_off(states[t, :3], scene.agents[t, n, :2]) > behind
        if not ego_stopped and (other_stopped or not rear):  # stopped-track, front or lateral
            score = min(score, 0.5 if static else 0.0)
        else:
            met.add(n)
    return score


def time_to_collision(states: np.ndarray, corners: np.ndarray, on_road: np.ndarray, scene: PlanningScene,
                      config: PDMConfig = PDMConfig()) -> float:
    """TTC (binary) from rollout ``states [41, 6]``, ego ``corners [41, 4, 2]`` and ``on_road [41]``."""
    last = len(scene.agents) - 1
    k = np.asarray(config.ttc_steps)
    idx = np.minimum(np.arange(STEPS)[:, None] + k, last)  # [41, K] object time index
    vel = states[:, 3, None] * np.stack([np.cos(states[:, 2]), np.sin(states[:, 2])], axis=-1)  # [41, 2]
    moved = corners[:, None] + (vel[:, None, None, :] * (k * DT)[None, :, None, None])  # [41, K, 4, 2]
    objects = _corners(scene.agents)[idx]  # [41, K, N, 4, 2]
    hit = _overlap(moved[:, :, None], objects) & scene.agent_valid[idx]  # [41, K, N]
    hit &= (states[:, 3] >= config.ttc_stopped_speed)[:, None, None]
    ahead, behind = np.deg2rad(config.ahead_deg), np.deg2rad(config.behind_deg)
    met = set()
    for t, j, n in zip(*np.nonzero(hit)):
        if n in met:
            continue
        off = _angle_off(states[t, :3], scene.agents[idx[t, j], n, :2])
        if off < ahead or (not on_road[t] and off <= behind):
            return 0.0
        met.add(n)
    return 1.0


def is_comfortable(states: np.ndarray, config: PDMConfig = PDMConfig()) -> float:
    """C from rollout ``states [T, 6]`` at ``DT``: every filtered signal strictly within nuPlan's bounds."""
    n = len(states)
    ax, ay = states[:, 4], states[:, 3] * states[:, 5]

    def smooth(x, window, poly=2, deriv=0):
        return savgol_filter(x, min(window, n), poly, deriv=deriv, delta=DT)

    yaw = np.unwrap(states[:, 2])
    checks = (
        (smooth(ax, n), *config.lon_accel),
        (smooth(ay, n), -config.max_lat_accel, config.max_lat_accel),
        (smooth(smooth(np.hypot(ax, ay), 8), n, deriv=1), -config.max_jerk, config.max_jerk),
        (smooth(smooth(ax, 8), n, deriv=1), -config.max_lon_jerk, config.max_lon_jerk),
        (smooth(yaw, 5, deriv=1), -config.max_yaw_rate, config.max_yaw_rate),
        (smooth(yaw, 5, poly=3, deriv=2), -config.max_yaw_accel, config.max_yaw_accel),
    )
    return float(all(((x > lo) & (x < hi)).all() for x, lo, hi in checks))


def route_progress(scene: PlanningScene, start: np.ndarray, end: np.ndarray) -> float:
    """Metres (>= 0) the ego box centre moves along the centreline between rear-axle poses ``start, end [3]``."""
    centres = scene.ego_geometry.boxes(np.stack([start, end]))[:, :2]
    s = project(scene.centerline, centres)
    return max(float(s[1] - s[0]), 0.0)


def pdm_score(plan: Trajectory, scene: PlanningScene, config: PDMConfig = PDMConfig()) -> PDMResult:
    """Score one plan (``[8, 3]`` poses at 2 Hz, ego frame) against ``scene``."""
    states = simulate(plan, scene.ego, scene.ego_geometry, config)
    corners = _corners(scene.ego_geometry.boxes(states[:, :3]))  # [41, 4, 2]
    on_road = on_drivable(corners, scene)
    nc = no_at_fault_collision(states, corners, scene, config)
    dac = float(on_road.all())
    ttc = time_to_collision(states, corners, on_road, scene, config)
    comfort = is_comfortable(states, config)
    progress = route_progress(scene, states[0, :3], states[-1, :3])
    reference = route_progress(scene, np.zeros(3), scene.expert.poses[-1])
    multi = nc * dac
    best = max(reference, progress * multi)  # NAVSIM: the best of all scored trajectories
    ep = progress * multi / best if best > config.progress_threshold else float(multi > 0)
    w = np.array([config.ttc_weight, config.progress_weight, config.comfort_weight])
    pdms = multi * float(w @ [ttc, ep, comfort]) / w.sum()
    return PDMResult(nc, dac, ttc, ep, comfort, pdms, progress, reference)


def mean_scores(results: Sequence[PDMResult]) -> dict[str, float]:
    """Mean of every field over scenes (NAVSIM reports the scene-averaged PDMS and sub-scores)."""
    if not results:
        raise ValueError("mean_scores: no results")
    return {f.name: float(np.mean([getattr(r, f.name) for r in results])) for f in fields(PDMResult)}
