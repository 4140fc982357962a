"""Synthetic driving sequences: the world, the ego's drive, and every sensor and ground truth per frame.

``SimSequence(seed, config)[k]`` is a :class:`~perception.structures.Sample` whose frame holds a
LiDAR sweep ending at ``t_k = (k + 1) / rate`` and the camera images at ``t_k``, and whose targets
hold the 3D boxes (class, track id, velocity, LiDAR point count, visibility), depth and semantic
maps per camera, the BEV semantic map, the ego's future (NAVSIM: 8 poses at 2 Hz over 4 s), the
driving command and the other agents' futures.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from perception.geometry import se3
from perception.geometry.boxes import transform_boxes
from perception.geometry.grid import BevGrid
from perception.geometry.se3 import SE3
from perception.sim import world as W
from perception.sim.ego import EgoMotion, plan_motion
from perception.sim.render import LIDAR_FIELDS, lidar_sweep, render_camera, scene_at
from perception.sim.sensors import LIDAR_MOUNT, RIGS, BeamPattern, SimCamera, hdl64, jittered, waymo_top
from perception.structures import (
    Boxes3D, Calibration, CameraImage, DepthMap, EgoPose, Frame, PointCloud, Sample, Targets, Trajectory,
)

LIDAR = "LIDAR_TOP"
FUTURE_STEPS, FUTURE_DT = 8, 0.5  # NAVSIM's 4 s at 2 Hz
COMMANDS = ("left", "straight", "right", "unknown")
EGO_SIZE = (4.8, 2.0, 1.6)  # l, w, h; the ego frame origin is the rear axle, 1.0 m ahead of the rear
EGO_REAR_OVERHANG = 1.0


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``rigs`` name camera rigs in :data:`perception.sim.sensors.RIGS`."""

    frames: int = 40
    rate_hz: float = 10.0
    lidar: str = "hdl64"  # or "waymo_top"
    rigs: tuple[str, ...] = ("navsim", "fisheye")
    layout: str | None = None  # None: chosen by the seed
    label_range: float = 80.0  # boxes within this xy distance of the ego are labelled
    bev_grid: BevGrid = field(default_factory=BevGrid)
    render_cameras: bool = True
    range_noise: float | None = None  # override the pattern's range noise (m)
    mount_jitter: tuple[float, float] | None = None  # (deg, m): each sequence's cameras mounted off the rig (seeded)

    def beam_pattern(self) -> BeamPattern:
        pattern = {"hdl64": hdl64, "waymo_top": waymo_top}.get(self.lidar)
        if pattern is None:
            raise ValueError(f"SimConfig.lidar: 'hdl64' or 'waymo_top', got {self.lidar!r}")
        p = pattern()
        return p if self.range_noise is None else replace(p, range_noise=self.range_noise)

    def cameras(self, seed: int | None = None) -> list[SimCamera]:
        """The rigs' cameras; with ``mount_jitter`` and a sequence ``seed``, each mounted off its nominal pose
        (:func:`~perception.sim.sensors.jittered`, drawn from the seed: the same sequence, the same mounts)."""
        unknown = [r for r in self.rigs if r not in RIGS]
        if unknown:
            raise ValueError(f"SimConfig.rigs: unknown {unknown}; choose from {tuple(RIGS)}")
        cams = [c for r in self.rigs for c in RIGS[r]()]
        if self.mount_jitter is None or seed is None:
            return cams
        return [jittered(c, np.random.default_rng([int(seed), 7919, j]), *self.mount_jitter) for j, c in enumerate(cams)]


class SimSequence:
    """One deterministic sequence; ``len`` frames, random access, each frame its own RNG stream."""

    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = int(seed)
        self.config = config or SimConfig()
        rng = np.random.default_rng(self.seed)
        self.world = W.generate_world(self.seed, self.config.layout)
        horizon = self.config.frames / self.config.rate_hz + FUTURE_STEPS * FUTURE_DT + 0.5
        self.motion: EgoMotion = plan_motion(self.world.route, rng, horizon, s_start=40.0)
        self._remove_conflicts(horizon)
        self.pattern = self.config.beam_pattern()
        self.cameras = self.config.cameras(self.seed)
        self.calib = Calibration(
            ego_from_sensor={LIDAR: LIDAR_MOUNT, **{c.name: c.ego_from_camera for c in self.cameras}},
            cameras={c.name: c.model for c in self.cameras},
        )

    def __len__(self) -> int:
        return self.config.frames

    def time(self, k: int) -> float:
        return (k + 1) / self.config.rate_hz

    def world_from_ego(self, t):
        return self.motion.world_from_ego(t)

    def _remove_conflicts(self, horizon: float) -> None:
        """Drop agents and parked cars that would come within a car's length of the ego (no collisions in the data)."""
        times = np.arange(0.0, horizon, 0.1)
        st = self.motion.state(times)
        reach = EGO_SIZE[0] / 2 - EGO_REAR_OVERHANG  # rear axle → body centre
        ego = st[:, :2] + reach * np.stack([np.cos(st[:, 2]), np.sin(st[:, 2])], axis=1)

        def clear(xy: np.ndarray, length: float) -> bool:
            return bool((np.linalg.norm(xy - ego, axis=1) > (EGO_SIZE[0] + length) / 2 + 2.0).all())

        self.world.agents = [a for a in self.world.agents
                             if clear(np.array([a.pose(t)[:2] for t in times]), a.size[0])]
        self.world.static = [s for s in self.world.static
                             if s.cls != W.CAR or clear(np.array([[s.x, s.y]]), s.size[0])]

    @cached_property
    def ego_states(self) -> np.ndarray:
        """``[frames, 6]`` (x, y, heading, speed, acceleration, yaw rate) at each frame time."""
        return self.motion.state(np.array([self.time(k) for k in range(len(self))]))

    def __getitem__(self, k: int) -> Sample:
        if not 0 <= k < len(self):
            raise IndexError(f"SimSequence: frame {k} out of range for {len(self)} frames")
        return self.frame(k)

    def __iter__(self):
        for k in range(len(self)):
            yield self.frame(k)

    def frame(self, k: int) -> Sample:
        t = self.time(k)
        rng = np.random.default_rng([self.seed, k])
        world_from_ego = self.world_from_ego(t)
        ego_from_world = se3.inverse(world_from_ego)
        pts, obj_row, _ = lidar_sweep(self.world, self.world_from_ego, t, self.pattern, LIDAR_MOUNT.matrix, rng)
        scene = scene_at(self.world, t)
        token = f"sim{self.seed:05d}_{k:04d}"
        images, depth, semantic, cam_pixels = {}, {}, {}, {}
        if self.config.render_cameras:
            for cam in self.cameras:
                r = render_camera(self.world, scene, cam, world_from_ego)
                images[cam.name] = CameraImage(r.image, cam.model, t, cam.name)
                depth[cam.name] = DepthMap(r.depth, cam.name, t, "range" if cam.range_depth else "z")
                semantic[cam.name] = r.semantic
                ids, counts = np.unique(r.instance[r.instance >= 0], return_counts=True)
                for i, c in zip(ids, counts):
                    cam_pixels[int(i)] = cam_pixels.get(int(i), 0) + int(c)
        state = self.ego_states[k]
        targets = self._targets(t, ego_from_world, obj_row, cam_pixels, depth, semantic)
        frame = Frame(
            token=token, timestamp=t, calib=self.calib,
            lidar={LIDAR: PointCloud(pts, LIDAR_FIELDS, t, LIDAR)},
            cameras=images, ego_pose=EgoPose(t, SE3(world_from_ego)), source="sim",
            meta={"sequence": self.seed, "index": k, "layout": self.world.layout,
                  # odometry, as a car knows it (NAVSIM's ego status): speed, acceleration, yaw rate
                  "ego_speed": float(state[3]), "ego_acceleration": float(state[4]), "ego_yaw_rate": float(state[5]),
                  "driving_command": targets.driving_command},  # the route's command, an input as in NAVSIM
        )
        return Sample(frame, targets)

    def _targets(self, t, ego_from_world, obj_row, cam_pixels, depth, semantic) -> Targets:
        boxes_w, cls, ids, rows = self.world.objects_at(t)
        boxes_e = transform_boxes(boxes_w, ego_from_world)
        keep = np.linalg.norm(boxes_e[:, :2], axis=1) <= self.config.label_range
        boxes_e, cls, ids, rows = boxes_e[keep], cls[keep], ids[keep], rows[keep]
        hits = np.bincount(obj_row[obj_row >= 0], minlength=int(rows.max(initial=-1)) + 1)
        n_lidar = hits[rows] if len(rows) else np.zeros(0, np.int64)
        n_pix = np.array([cam_pixels.get(int(r), 0) for r in rows], np.int64)
        labels = np.array([W.OBJECT_TO_BOX_LABEL[c] for c in cls], np.int64)
        future_t = t + FUTURE_DT * np.arange(1, FUTURE_STEPS + 1)
        ego_future = _relative_poses(ego_from_world, self.world_from_ego(future_t))
        agents = self._agent_futures(rows, future_t, ego_from_world)
        heading_change = np.degrees(ego_future[-1, 2])
        command = 0 if heading_change > 20 else 2 if heading_change < -20 else 1
        return Targets(
            boxes=Boxes3D(boxes_e.astype(np.float32), labels, W.BOX_CLASSES, "ego", ids),
            attributes={"num_lidar_pts": n_lidar, "num_camera_pixels": n_pix,
                        "visible": (n_lidar >= 1) | (n_pix >= 20)},
            depth=depth,
            semantic=semantic,
            ego_future=Trajectory(ego_future, future_t - t),
            driving_command=command,
            bev_semantic=self.bev_semantic(ego_from_world, boxes_e, cls),
            agent_futures=agents,
            meta={"bev_grid": self.config.bev_grid, "classes": W.CLASS_NAMES, "commands": COMMANDS},
        )

    def _agent_futures(self, rows, future_t, ego_from_world) -> np.ndarray:
        """``[N, T, 3]`` future (x, y, heading) of each labelled object (rows as in ``World.boxes_at``)."""
        n_static = len(self.world.static)
        out = np.zeros((len(rows), len(future_t), 3))
        for i, r in enumerate(rows):
            if r < n_static:  # a parked car stays where it is
                s = self.world.static[r]
                poses = np.tile([s.x, s.y, s.yaw], (len(future_t), 1))
            else:
                agent = self.world.agents[r - n_static]
                poses = np.array([agent.pose(tf) for tf in future_t])
            out[i] = _relative_xyh(ego_from_world, poses)
        return out

    def bev_semantic(self, ego_from_world: np.ndarray, boxes_e: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """``[nx, ny]`` uint8 class per BEV cell: the ground's class, overdrawn by object footprints."""
        grid = self.config.bev_grid
        centres = grid.cell_centers().reshape(-1, 2)
        world_xy = se3.transform_points(se3.inverse(ego_from_world), np.column_stack([centres, np.zeros(len(centres))]))
        out = self.world.ground.lookup(world_xy[:, :2])
        for box, c in zip(boxes_e, cls):
            d = centres - box[:2]
            cy, sy = np.cos(box[6]), np.sin(box[6])
            inside = (np.abs(d[:, 0] * cy + d[:, 1] * sy) <= box[3] / 2) & (np.abs(-d[:, 0] * sy + d[:, 1] * cy) <= box[4] / 2)
            out[inside] = c
        return out.reshape(grid.shape)


def _relative_xyh(ego_from_world: np.ndarray, poses_w: np.ndarray) -> np.ndarray:
    """World ``(x, y, heading) [T, 3]`` → the same in the ego frame."""
    xy = se3.transform_points(ego_from_world, np.column_stack([poses_w[:, :2], np.zeros(len(poses_w))]))[:, :2]
    yaw = np.arctan2(ego_from_world[1, 0], ego_from_world[0, 0])
    h = np.angle(np.exp(1j * (poses_w[:, 2] + yaw)))
    return np.column_stack([xy, h])


def _relative_poses(ego_from_world: np.ndarray, world_from_future: np.ndarray) -> np.ndarray:
    """Future ego poses ``[T, 4, 4]`` → ``(x, y, heading) [T, 3]`` in the current ego frame."""
    rel = ego_from_world @ world_from_future
    return np.column_stack([rel[:, 0, 3], rel[:, 1, 3], np.arctan2(rel[:, 1, 0], rel[:, 0, 0])])
