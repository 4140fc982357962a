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

import numpy as np

from perception.geometry import se3
from perception.sim import world as W
from perception.sim.raycast import GROUND, NOTHING, cast_rays, face_normals
from perception.sim.sensors import BeamPattern, SimCamera

SUN = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])

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
    """Unit rays ``[H*W, 3]`` (camera frame) through every pixel centre, and ``valid [H*W]``."""
    uv = model.pixel_grid().reshape(-1, 2)
    rays, valid = model.unproject(uv)
    return np.ascontiguousarray(rays), valid


@dataclass(frozen=True)
class CameraRender:
    image: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray  # [H, W] float32: z (pinhole) or range (fisheye); 0 = no surface
    semantic: np.ndarray  # [H, W] uint8 class ids (SKY where nothing)
    instance: np.ndarray  # [H, W] int32 labelled-object row (-1: none)


def render_camera(world: W.World, scene: Scene, cam: SimCamera, world_from_ego: np.ndarray, max_range: float = 150.0) -> CameraRender:
    """Render ``cam`` with the ego at ``world_from_ego [4, 4]`` in ``scene``."""
    h, w = cam.model.height, cam.model.width
    rays, valid = camera_rays(cam.model)
    world_from_cam = world_from_ego @ cam.ego_from_camera.matrix
    idx = np.flatnonzero(valid)
    d_w = rays[idx] @ world_from_cam[:3, :3].T
    origin = world_from_cam[:3, 3]
    hits = cast_rays(origin[None], d_w, scene.prims, max_range)
    t = hits.t
    hit = hits.prim != NOTHING
    p_w = origin + np.where(hit, t, 0.0)[:, None] * d_w
    cls = classify_hits(world, scene, p_w, hits.prim)

    # colour: ground map palette with grain, objects' own colours, façade windows, sky gradient
    color = np.zeros((len(idx), 3), np.float32)
    g = hits.prim == GROUND
    grain = 0.85 + 0.3 * _hash01(np.floor(p_w[g, 0] / 0.08), np.floor(p_w[g, 1] / 0.08))
    patch = 0.95 + 0.1 * _hash01(np.floor(p_w[g, 0] / 1.5), np.floor(p_w[g, 1] / 1.5), 1)
    color[g] = GROUND_COLORS[cls[g]] * (grain * patch)[:, None]
    b = hits.prim >= 0
    pb = hits.prim[b]
    color[b] = scene.color[pb]
    bld = np.zeros(len(idx), bool)
    bld[b] = scene.cls[pb] == W.BUILDING
    if bld.any():
        along = p_w[bld, 0] + p_w[bld, 1]  # façade coordinate (good enough for a window grid)
        zz = p_w[bld, 2]
        win = ((np.mod(along, 3.0) > 1.0) & (np.mod(zz, 3.2) > 1.1) & (np.mod(zz, 3.2) < 2.6) & (zz > 1.0))
        color[np.flatnonzero(bld)[win]] = (0.18, 0.24, 0.32)
    normal = face_normals(scene.prims, hits.prim, hits.face)
    light = 0.45 + 0.55 * np.clip(normal @ SUN, 0.0, 1.0)
    fog = np.exp(-np.where(hit, t, 0.0) / 400.0)[:, None]
    color = color * light[:, None] * fog + (1 - fog) * np.array([0.7, 0.75, 0.8], np.float32)
    sky = ~hit
    if sky.any():
        up = np.clip(d_w[sky, 2], 0, 1)[:, None]
        color[sky] = (1 - up) * np.array([0.78, 0.84, 0.92]) + up * np.array([0.35, 0.55, 0.85])
    cls[sky] = W.SKY

    image = np.zeros((h * w, 3), np.uint8)
    image[idx] = np.clip(color * 255.0, 0, 255).astype(np.uint8)
    depth = np.zeros(h * w, np.float32)
    dist = np.where(hit, t, 0.0)
    depth[idx] = dist if cam.range_depth else dist * rays[idx, 2]
    semantic = np.full(h * w, W.SKY, np.uint8)
    semantic[idx] = cls
    instance = np.full(h * w, -1, np.int32)
    inst = np.full(len(idx), -1, np.int32)
    inst[b] = scene.obj[pb]
    instance[idx] = inst
    return CameraRender(image.reshape(h, w, 3), depth.reshape(h, w), semantic.reshape(h, w), instance.reshape(h, w))
