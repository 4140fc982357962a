"""Sensor simulation by ray casting: LiDAR sweeps and camera images with depth and semantics.

LiDAR: every firing is cast at its own time inside the sweep. The sweep is split into azimuth
chunks; within a chunk the moving agents are frozen at the chunk's mid-time (≤ 6 ms, a few cm at
city speeds), while the sensor's own pose is exact per firing. Points are returned as a real
spinning LiDAR gives them: in the sensor frame at each point's capture time (not motion
compensated), with a per-point time offset.

Cameras: one ray per pixel centre from the camera model's ``unproject`` (global shutter at the
frame time), Lambertian shading with a fixed sun, procedural textures (asphalt grain, lane paint,
façade windows), a sky gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from perception.sim import world as W
from perception.sim.raycast import GROUND, NOTHING, cast_rays, face_normals
from perception.sim.sensors import BeamPattern, SimCamera

SUN = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])
assert W.SKY == 12 and W.BUILDING == 9  # the shading kernel hard-codes these ids

GROUND_COLORS = np.zeros((W.SKY + 1, 3), np.float32)
GROUND_COLORS[W.TERRAIN] = (0.30, 0.42, 0.20)
GROUND_COLORS[W.SIDEWALK] = (0.62, 0.61, 0.58)
GROUND_COLORS[W.ROAD] = (0.24, 0.24, 0.26)
GROUND_COLORS[W.MARKING_WHITE] = (0.92, 0.92, 0.90)
GROUND_COLORS[W.MARKING_YELLOW] = (0.88, 0.72, 0.12)
GROUND_COLORS[W.PARKING] = (0.30, 0.30, 0.33)

# LiDAR reflectivity per class (paint and signs are retro-reflective; asphalt is dark)
REFLECTIVITY = np.full(W.SKY + 1, 0.3, np.float32)
REFLECTIVITY[[W.TERRAIN, W.SIDEWALK, W.ROAD, W.MARKING_WHITE, W.MARKING_YELLOW, W.PARKING]] = (0.25, 0.35, 0.12, 0.8, 0.7, 0.15)
REFLECTIVITY[[W.CAR, W.PEDESTRIAN, W.CYCLIST, W.BUILDING, W.POLE, W.VEGETATION]] = (0.5, 0.3, 0.4, 0.35, 0.6, 0.2)


@dataclass(frozen=True)
class Scene:
    """The world frozen at one time: primitives and what each is."""

    prims: np.ndarray  # [P, 7] bottom-centred boxes
    cls: np.ndarray  # [P] class id
    obj: np.ndarray  # [P] labelled-object row (-1: scenery)
    color: np.ndarray  # [P, 3]


def scene_at(world: W.World, t: float) -> Scene:
    return Scene(*world.boxes_at(t))


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def classify_hits(world: W.World, scene: Scene, points: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """Class id per hit (ground class from the map, object class from its primitive, SKY for none)."""
    out = np.full(len(prim), W.SKY, np.uint8)
    g = prim == GROUND
    out[g] = world.ground.lookup(points[g, :2])
    b = prim >= 0
    out[b] = scene.cls[prim[b]]
    return out


# --- LiDAR -----------------------------------------------------------------------------------------
LIDAR_FIELDS = ("x", "y", "z", "intensity", "ring", "time")


def lidar_sweep(world: W.World, world_from_ego, t_end: float, pattern: BeamPattern, ego_from_lidar: np.ndarray,
                rng: np.random.Generator, chunks: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sweep ending at ``t_end``.

    ``world_from_ego(times [N]) -> [N, 4, 4]`` gives the ego pose at any time. Returns
    ``points [N, 6]`` (x, y, z in the LiDAR frame at capture time, intensity in [0, 1], ring,
    time offset to ``t_end`` in s, ≤ 0), ``obj [N]`` the labelled-object row hit (-1: none) and
    ``cls [N]`` the class hit.
    """
    n_az, n_b = pattern.azimuth_steps, len(pattern.elevations_deg)
    elev = np.radians(pattern.elevations_deg)
    t_start = t_end - pattern.period
    k = np.arange(n_az)
    # clockwise from the back, as Velodynes spin; firing k at t_start + k/n_az * period
    az = np.pi - 2 * np.pi * (k + 0.5) / n_az
    times = t_start + (k + 0.5) / n_az * pattern.period
    out_pts, out_obj, out_cls = [], [], []
    for c in range(chunks):
        sl = slice(c * n_az // chunks, (c + 1) * n_az // chunks)
        kk = k[sl]
        t_mid = float(times[sl].mean())
        scene = scene_at(world, t_mid)
        poses = world_from_ego(times[sl]) @ ego_from_lidar  # [K, 4, 4] world_from_lidar per firing
        a = az[sl][:, None]
        e = elev[None, :]
        d_l = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e) + 0 * a], axis=-1)  # [K, B, 3]
        d_w = np.einsum("kij,kbj->kbi", poses[:, :3, :3], d_l).reshape(-1, 3)
        o_w = np.repeat(poses[:, :3, 3], n_b, axis=0)
        ref = poses[len(kk) // 2, :3, 3]
        pad = float(np.linalg.norm(o_w[:, :2] - ref[:2], axis=1).max()) + 0.01
        hits = cast_rays(o_w, d_w, scene.prims, pattern.max_range, ref_origin=ref, pad=pad)
        ok = (hits.prim != NOTHING) & (hits.t >= pattern.min_range)
        ok &= rng.random(len(ok)) >= pattern.drop_prob
        r = hits.t[ok] + rng.normal(0.0, pattern.range_noise, ok.sum())
        p_w = o_w[ok] + hits.t[ok, None] * d_w[ok]
        cls = classify_hits(world, scene, p_w, hits.prim[ok])
        normal = face_normals(scene.prims, hits.prim[ok], hits.face[ok])
        cos_inc = np.abs(np.einsum("ij,ij->i", normal, d_w[ok]))
        intensity = np.clip(REFLECTIVITY[cls] * (0.4 + 0.6 * cos_inc) * (1.0 + rng.normal(0, 0.05, len(r))), 0, 1)
        ring = np.tile(np.arange(n_b), len(kk))[ok]
        tt = np.repeat(times[sl] - t_end, n_b)[ok]
        p_l = r[:, None] * d_l.reshape(-1, 3)[ok]  # the measured range along the beam, sensor frame
        out_pts.append(np.column_stack([p_l, intensity, ring, tt]))
        obj = np.full(len(r), -1, np.int64)
        bh = hits.prim[ok] >= 0
        obj[bh] = scene.obj[hits.prim[ok][bh]]
        out_obj.append(obj)
        out_cls.append(cls)
    return (np.concatenate(out_pts).astype(np.float32), np.concatenate(out_obj), np.concatenate(out_cls))


# --- cameras ---------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def camera_rays(model) -> tuple[np.ndarray, np.ndarray]:
    """Unit rays ``[M, 3]`` (camera frame) through the model's valid pixel centres, and their flat indices ``[M]``."""
    uv = model.pixel_grid().reshape(-1, 2)
    rays, valid = model.unproject(uv)
    idx = np.flatnonzero(valid)
    return np.ascontiguousarray(rays[idx]), idx


@dataclass(frozen=True)
class CameraRender:
    image: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray  # [H, W] float32: z (pinhole) or range (fisheye); 0 = no surface
    semantic: np.ndarray  # [H, W] uint8 class ids (SKY where nothing)
    instance: np.ndarray  # [H, W] int32 labelled-object row (-1: none)


@numba.njit(cache=True)
def _hash_cell(ix, iy, salt):
    h = (np.int64(ix) * 73856093) ^ (np.int64(iy) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return np.float32((h ^ (h >> 16)) & 0xFFFF) / np.float32(65536.0)


@numba.njit(cache=True, parallel=True)
def _shade(origin, dirs, rays_z, t, prim, face, prims, prim_cls, prim_obj, prim_color, ground, g_origin, g_res,
           ground_colors, sun, range_depth, rgb, depth, sem, inst):
    """Per pixel: class, colour (textures, Lambert, fog, sky), depth and instance from its ray hit."""
    n = dirs.shape[0]
    gh, gw = ground.shape
    for i in numba.prange(n):
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        p = prim[i]
        if p == -1:  # sky
            up = min(max(dz, 0.0), 1.0)
            rgb[i, 0] = np.uint8(255 * ((1 - up) * 0.78 + up * 0.35))
            rgb[i, 1] = np.uint8(255 * ((1 - up) * 0.84 + up * 0.55))
            rgb[i, 2] = np.uint8(255 * ((1 - up) * 0.92 + up * 0.85))
            depth[i] = 0.0
            sem[i] = 12
            inst[i] = -1
            continue
        d = t[i]
        x, y, z = origin[0] + d * dx, origin[1] + d * dy, origin[2] + d * dz
        nx, ny, nz = 0.0, 0.0, 1.0
        if p == -2:  # ground: class from the map, asphalt grain
            j = int(np.floor((x - g_origin[0]) / g_res + 0.5))
            k = int(np.floor((y - g_origin[1]) / g_res + 0.5))
            c = 0
            if 0 <= k < gh and 0 <= j < gw:
                c = ground[k, j]
            grain = 0.85 + 0.3 * _hash_cell(np.floor(x / 0.08), np.floor(y / 0.08), 0)
            grain *= 0.95 + 0.1 * _hash_cell(np.floor(x / 1.5), np.floor(y / 1.5), 1)
            r, g, b = ground_colors[c, 0] * grain, ground_colors[c, 1] * grain, ground_colors[c, 2] * grain
            inst[i] = -1
        else:
            c = prim_cls[p]
            r, g, b = prim_color[p, 0], prim_color[p, 1], prim_color[p, 2]
            if c == 9:  # building façade windows
                along = x + y
                zz = z % 3.2
                if along % 3.0 > 1.0 and zz > 1.1 and zz < 2.6 and z > 1.0:
                    r, g, b = 0.18, 0.24, 0.32
            axis = face[i] // 2
            sgn = 1.0 if face[i] % 2 == 1 else -1.0
            cy, sy = np.cos(prims[p, 6]), np.sin(prims[p, 6])
            if axis == 0:
                nx, ny, nz = sgn * cy, sgn * sy, 0.0
            elif axis == 1:
                nx, ny, nz = -sgn * sy, sgn * cy, 0.0
            else:
                nx, ny, nz = 0.0, 0.0, sgn
            inst[i] = prim_obj[p]
        light = 0.45 + 0.55 * min(max(nx * sun[0] + ny * sun[1] + nz * sun[2], 0.0), 1.0)
        fog = np.exp(-d / 400.0)
        rgb[i, 0] = np.uint8(min(max(255 * (r * light * fog + (1 - fog) * 0.7), 0.0), 255.0))
        rgb[i, 1] = np.uint8(min(max(255 * (g * light * fog + (1 - fog) * 0.75), 0.0), 255.0))
        rgb[i, 2] = np.uint8(min(max(255 * (b * light * fog + (1 - fog) * 0.8), 0.0), 255.0))
        depth[i] = d if range_depth else d * rays_z[i]
        sem[i] = c


def render_camera(world: W.World, scene: Scene, cam: SimCamera, world_from_ego: np.ndarray, max_range: float = 150.0) -> CameraRender:
    """Render ``cam`` with the ego at ``world_from_ego [4, 4]`` in ``scene``."""
    h, w = cam.model.height, cam.model.width
    rays, idx = camera_rays(cam.model)
    world_from_cam = world_from_ego @ cam.ego_from_camera.matrix
    d_w = rays @ world_from_cam[:3, :3].T
    origin = np.ascontiguousarray(world_from_cam[:3, 3])
    hits = cast_rays(origin[None], d_w, scene.prims, max_range)
    m = len(idx)
    rgb = np.empty((m, 3), np.uint8)
    depth_v = np.empty(m, np.float32)
    sem_v = np.empty(m, np.uint8)
    inst_v = np.empty(m, np.int32)
    _shade(origin, d_w, np.ascontiguousarray(rays[:, 2]), hits.t, hits.prim, hits.face, np.asarray(scene.prims, np.float64),
           scene.cls, scene.obj, scene.color, world.ground.classes, np.asarray(world.ground.origin, np.float64),
           float(world.ground.res), GROUND_COLORS, SUN, bool(cam.range_depth), rgb, depth_v, sem_v, inst_v)
    image = np.zeros((h * w, 3), np.uint8)
    image[idx] = rgb
    depth = np.zeros(h * w, np.float32)
    depth[idx] = depth_v
    semantic = np.full(h * w, W.SKY, np.uint8)
    semantic[idx] = sem_v
    instance = np.full(h * w, -1, np.int32)
    instance[idx] = inst_v
    return CameraRender(image.reshape(h, w, 3), depth.reshape(h, w), semantic.reshape(h, w), instance.reshape(h, w))
