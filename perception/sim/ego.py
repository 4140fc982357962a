"""The ego's motion along its route: a speed profile with bounded acceleration, jerk and lateral acceleration.

The speed changes between random targets with a smooth-step profile whose peak acceleration and
jerk stay under ``A_MAX`` and ``J_MAX``; before curves it is capped so that ``v^2 * curvature``
stays under ``A_LAT_MAX`` (so the yaw rate ``v * curvature`` is bounded too). Poses come from
integrating the profile on a fine time grid and reading the route at the resulting arclength.
The ego frame sits on the ground below the rear axle, x forward, y left, z up (nuPlan / NAVSIM).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.sim.world import Path2D

A_MAX = 2.0  # m/s^2, longitudinal
J_MAX = 2.5  # m/s^3
A_LAT_MAX = 2.5  # m/s^2
DT = 0.01  # s, integration step


@dataclass(frozen=True)
class EgoMotion:
    """Tabulated ego motion: ``times [K]``, arclength ``s [K]``, speed ``v [K]`` along ``route``."""

    route: Path2D
    times: np.ndarray
    s: np.ndarray
    v: np.ndarray

    def state(self, t: np.ndarray | float) -> np.ndarray:
        """``[..., 6]`` = (x, y, heading, speed, acceleration, yaw rate) at times ``t``."""
        t = np.asarray(t, dtype=np.float64)
        s = np.interp(t, self.times, self.s)
        v = np.interp(t, self.times, self.v)
        a = np.interp(t, self.times, np.gradient(self.v, self.times))
        pose = self.route.at(s)
        eps = 0.05
        yaw_rate = (self.route.at(np.interp(t + eps, self.times, self.s))[..., 2]
                    - self.route.at(np.interp(t - eps, self.times, self.s))[..., 2]) / (2 * eps)
        return np.concatenate([pose, v[..., None], a[..., None], yaw_rate[..., None]], axis=-1)

    def world_from_ego(self, t: np.ndarray | float) -> np.ndarray:
        """``[..., 4, 4]`` poses at times ``t``."""
        st = self.state(t)
        c, s_ = np.cos(st[..., 2]), np.sin(st[..., 2])
        m = np.zeros(st.shape[:-1] + (4, 4))
        m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1] = c, -s_, s_, c
        m[..., 2, 2] = m[..., 3, 3] = 1.0
        m[..., 0, 3], m[..., 1, 3] = st[..., 0], st[..., 1]
        return m


def curvature_speed_limit(route: Path2D) -> np.ndarray:
    """Speed cap ``[K]`` along the route from its curvature, looking 30 m ahead (so the car brakes early)."""
    kappa = np.abs(np.gradient(route.heading, route.s, edge_order=1))
    kappa = np.convolve(kappa, np.ones(5) / 5, mode="same")
    cap = np.sqrt(A_LAT_MAX / np.maximum(kappa, 1e-6))
    # look ahead: the cap at s is the minimum over [s, s + 30 m]
    step = max(1, int(30.0 / max(np.median(np.diff(route.s)), 1e-3)))
    ahead = np.array([cap[i:i + step].min() for i in range(len(cap))])
    return ahead


def plan_motion(route: Path2D, rng: np.random.Generator, duration: float, s_start: float = 0.0) -> EgoMotion:
    """A plausible drive of ``duration`` seconds along ``route`` starting at arclength ``s_start``."""
    cap = curvature_speed_limit(route)
    n = int(np.ceil(duration / DT)) + 1
    times = np.arange(n) * DT
    v = np.empty(n)
    s = np.empty(n)
    v[0] = min(float(rng.uniform(4.0, 12.0)), np.interp(s_start, route.s, cap))
    s[0] = s_start
    target = float(rng.uniform(3.0, 14.0))
    next_change = float(rng.uniform(2.0, 5.0))
    a = 0.0
    for k in range(1, n):
        t = times[k]
        if t >= next_change:
            target = float(rng.uniform(3.0, 14.0))
            next_change = t + float(rng.uniform(2.0, 5.0))
        goal = min(target, float(np.interp(s[k - 1], route.s, cap)))
        # acceleration that closes the speed gap, with bounded magnitude and rate of change (jerk)
        want = np.clip((goal - v[k - 1]) * 1.0, -A_MAX, A_MAX)
        a = a + np.clip(want - a, -J_MAX * DT, J_MAX * DT)
        v[k] = max(0.0, v[k - 1] + a * DT)
        s[k] = s[k - 1] + 0.5 * (v[k] + v[k - 1]) * DT
    return EgoMotion(route, times, s, v)
