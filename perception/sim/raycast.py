"""Ray casting against the synthetic world: yaw-only boxes on the ground plane ``z = 0`` (numba).

Rays are culled by azimuth: seen from a reference origin, every box covers an azimuth interval,
and a ray (from any origin within ``pad`` metres of the reference) can only hit the boxes whose
padded interval contains the ray's own azimuth. Boxes are binned by interval once per sensor
(CSR lists), so each ray tests a handful of boxes instead of all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

GROUND = -2  # hit id of the ground plane
NOTHING = -1  # no hit within range (sky)


@dataclass(frozen=True)
class Hits:
    """Per ray: ``t [N]`` distance along the (unit) ray (``inf`` for no hit), ``prim [N]`` the box
    index, ``GROUND`` or ``NOTHING``, and ``face [N]`` the entered face (0..5 = -x,+x,-y,+y,-z,+z of
    the box's own axes; -1 for ground/none)."""

    t: np.ndarray
    prim: np.ndarray
    face: np.ndarray


def prim_table(prims: np.ndarray) -> np.ndarray:
    """Bottom-centred boxes ``[P, 7]`` (x, y, z, l, w, h, yaw) → kernel table ``[P, 8]``
    (cx, cy, cz, hx, hy, hz, cos, sin) with centred z and half extents."""
    p = np.asarray(prims, dtype=np.float64).reshape(-1, 7)
    return np.ascontiguousarray(np.stack([
        p[:, 0], p[:, 1], p[:, 2] + p[:, 5] / 2, p[:, 3] / 2, p[:, 4] / 2, p[:, 5] / 2, np.cos(p[:, 6]), np.sin(p[:, 6]),
    ], axis=1))


@numba.njit(cache=True)
def _azimuth_bins(table, ox, oy, pad, nbins):
    """CSR (ptr [nbins+1], idx) of the boxes whose padded azimuth interval seen from (ox, oy) covers each bin."""
    n = table.shape[0]
    lo_bin = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    two_pi = 2.0 * np.pi
    for p in range(n):
        cx, cy, hx, hy, c, s = table[p, 0], table[p, 1], table[p, 3] + pad, table[p, 4] + pad, table[p, 6], table[p, 7]
        # origin inside the padded footprint: every azimuth
        rx, ry = ox - cx, oy - cy
        if abs(c * rx + s * ry) <= hx and abs(-s * rx + c * ry) <= hy:
            lo_bin[p] = 0
            count[p] = nbins
            continue
        ac = np.arctan2(cy - oy, cx - ox)
        dmin, dmax = 1e9, -1e9
        for sx in (-1.0, 1.0):
            for sy in (-1.0, 1.0):
                x = cx + sx * hx * c - sy * hy * s
                y = cy + sx * hx * s + sy * hy * c
                d = np.arctan2(y - oy, x - ox) - ac
                d = (d + np.pi) % two_pi - np.pi
                dmin = min(dmin, d)
                dmax = max(dmax, d)
        b0 = int(np.floor((ac + dmin + np.pi) / two_pi * nbins))
        b1 = int(np.floor((ac + dmax + np.pi) / two_pi * nbins))
        lo_bin[p] = b0
        count[p] = min(b1 - b0 + 1, nbins)
    ptr = np.zeros(nbins + 1, np.int64)
    for p in range(n):
        for k in range(count[p]):
            ptr[(lo_bin[p] + k) % nbins + 1] += 1
    for b in range(nbins):
        ptr[b + 1] += ptr[b]
    idx = np.empty(ptr[nbins], np.int64)
    fill = ptr[:-1].copy()
    for p in range(n):
        for k in range(count[p]):
            b = (lo_bin[p] + k) % nbins
            idx[fill[b]] = p
            fill[b] += 1
    return ptr, idx


@numba.njit(cache=True, parallel=True)
def _cast(origins, dirs, table, ptr, idx, nbins, max_range, t_out, prim_out, face_out):
    n = dirs.shape[0]
    stride = 0 if origins.shape[0] == 1 else 1
    two_pi = 2.0 * np.pi
    for i in numba.prange(n):
        j = i * stride
        ox, oy, oz = origins[j, 0], origins[j, 1], origins[j, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        best = max_range
        hit = -1
        face = -1
        if dz < -1e-12:
            tg = -oz / dz
            if tg < best:
                best = tg
                hit = -2
        b = int(np.floor((np.arctan2(dy, dx) + np.pi) / two_pi * nbins)) % nbins
        for k in range(ptr[b], ptr[b + 1]):
            p = idx[k]
            cx, cy, cz = table[p, 0], table[p, 1], table[p, 2]
            hx, hy, hz = table[p, 3], table[p, 4], table[p, 5]
            c, s = table[p, 6], table[p, 7]
            rx, ry, rz = ox - cx, oy - cy, oz - cz
            lo = (c * rx + s * ry, -s * rx + c * ry, rz)
            ld = (c * dx + s * dy, -s * dx + c * dy, dz)
            half = (hx, hy, hz)
            tnear, tfar = -1e30, 1e30
            axis, sign = -1, 0
            miss = False
            for a in range(3):
                if abs(ld[a]) < 1e-15:
                    if abs(lo[a]) > half[a]:
                        miss = True
                        break
                    continue
                inv = 1.0 / ld[a]
                t1 = (-half[a] - lo[a]) * inv
                t2 = (half[a] - lo[a]) * inv
                if t1 > t2:
                    t1, t2 = t2, t1
                if t1 > tnear:
                    tnear = t1
                    axis = a
                    sign = 1 if ld[a] < 0 else 0  # entering through the + face when moving towards -
                if t2 < tfar:
                    tfar = t2
            if miss or tnear > tfar or tnear <= 1e-6 or tnear >= best:
                continue
            best = tnear
            hit = p
            face = axis * 2 + sign
        if hit == -1:
            t_out[i] = np.inf
        else:
            t_out[i] = best
        prim_out[i] = hit
        face_out[i] = face


def cast_rays(origins: np.ndarray, dirs: np.ndarray, prims: np.ndarray, max_range: float = 200.0,
              ref_origin: np.ndarray | None = None, pad: float = 0.0, nbins: int = 720) -> Hits:
    """Cast unit rays ``dirs [N, 3]`` from ``origins [N or 1, 3]`` against ``prims [P, 7]`` and the ground.

    ``ref_origin`` (default: the first origin) is where azimuth culling is computed from; every
    origin must be within ``pad`` metres (in xy) of it.
    """
    origins = np.ascontiguousarray(origins, dtype=np.float64).reshape(-1, 3)
    dirs = np.ascontiguousarray(dirs, dtype=np.float64).reshape(-1, 3)
    if origins.shape[0] not in (1, dirs.shape[0]):
        raise ValueError(f"cast_rays: origins must be [1, 3] or [N, 3] with N = {dirs.shape[0]}, got {origins.shape}")
    table = prim_table(prims)
    ref = origins[0] if ref_origin is None else np.asarray(ref_origin, dtype=np.float64)
    ptr, idx = _azimuth_bins(table, float(ref[0]), float(ref[1]), float(pad), int(nbins))
    n = dirs.shape[0]
    t = np.empty(n, np.float64)
    prim = np.empty(n, np.int32)
    face = np.empty(n, np.int8)
    _cast(origins, dirs, table, ptr, idx, int(nbins), float(max_range), t, prim, face)
    return Hits(t, prim, face)


def face_normals(prims: np.ndarray, prim: np.ndarray, face: np.ndarray) -> np.ndarray:
    """World normals ``[N, 3]`` of the entered faces (ground: +z; none: 0)."""
    n = np.zeros((len(prim), 3))
    n[prim == GROUND, 2] = 1.0
    box = prim >= 0
    if box.any():
        yaw = np.asarray(prims)[prim[box], 6]
        axis, plus = face[box] // 2, face[box] % 2
        sgn = np.where(plus == 1, 1.0, -1.0)
        c, s = np.cos(yaw), np.sin(yaw)
        nb = np.zeros((box.sum(), 3))
        nb[axis == 0] = np.stack([c, s, np.zeros_like(c)], 1)[axis == 0]
        nb[axis == 1] = np.stack([-s, c, np.zeros_like(c)], 1)[axis == 1]
        nb[axis == 2] = [0.0, 0.0, 1.0]
        n[box] = nb * sgn[:, None]
    return n
