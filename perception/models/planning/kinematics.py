"""Keep a planned trajectory inside a longitudinal acceleration envelope (re-timing along its own path).

A learned planner regresses waypoints; small errors in where they fall along the path are errors in
speed, and a few tenths of a metre at 1.5 s is a hard acceleration the car would have to follow.
This step keeps the path and re-times it: from the current speed, the speed of each 0.5 s interval
is limited to ``[a_min, a_max]`` m/s² from the one before (never below 0), and the waypoints are
placed at the resulting distances along the path (straight on along the last heading if they run
past its end). The defaults sit inside nuPlan's comfort bounds on longitudinal acceleration
([-4.05, 2.40] m/s², which the PDM score applies to the tracked rollout).
"""
from __future__ import annotations

import numpy as np


def limit_acceleration(poses: np.ndarray, dt: float, speed: float, a_min: float = -4.0, a_max: float = 2.0,
                       jerk: float | None = None, accel: float = 0.0) -> np.ndarray:
    """``poses [T, 3]`` (x, y, heading at ``dt, 2 dt, ...``; the current pose is the origin) → re-timed ``[T, 3]``.

    ``jerk`` (m/s³, optional) also limits how fast the acceleration changes, from ``accel`` now.
    """
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 2 or poses.shape[1] != 3 or not np.isfinite(poses).all():
        raise ValueError(f"limit_acceleration: expected finite poses [T, 3], got shape {poses.shape}")
    path = np.concatenate([np.zeros((1, 3)), poses])
    seg = np.linalg.norm(np.diff(path[:, :2], axis=0), axis=1)  # [T]
    s_path = np.concatenate([[0.0], np.cumsum(seg)])
    v_prev, a_prev, s, out_s = max(float(speed), 0.0), float(accel), 0.0, []
    for k, d in enumerate(seg):
        step = dt / 2 if k == 0 else dt  # the first interval's mean speed is reached half an interval in
        lo, hi = a_min, a_max
        if jerk is not None:
            lo, hi = max(lo, min(a_prev, hi) - jerk * step), min(hi, max(a_prev, lo) + jerk * step)
        v = max(float(np.clip(d / dt, v_prev + lo * step, v_prev + hi * step)), 0.0)
        a_prev = (v - v_prev) / step
        s += v * dt
        out_s.append(s)
        v_prev = v
    out_s = np.array(out_s)
    heading = np.unwrap(path[:, 2])
    keep = np.concatenate([[True], seg > 1e-6])  # interp needs increasing arc length
    sp, xs, ys, hs = s_path[keep], path[keep, 0], path[keep, 1], heading[keep]
    x, y, h = np.interp(out_s, sp, xs), np.interp(out_s, sp, ys), np.interp(out_s, sp, hs)
    beyond = out_s > sp[-1]
    extra = out_s[beyond] - sp[-1]
    x[beyond] += extra * np.cos(hs[-1])
    y[beyond] += extra * np.sin(hs[-1])
    return np.column_stack([x, y, np.angle(np.exp(1j * h))])
