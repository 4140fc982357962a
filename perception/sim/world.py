"""The synthetic driving world: roads, static scenery, moving agents and the ego's route.

Everything is generated from one seed and lives on a flat ground plane ``z = 0`` in a world
frame (x, y in metres, z up). Geometry is deliberately simple so it can be ray-cast fast on a CPU:
every solid is a yaw-only oriented box ("primitive"); an object (a car, a building) is one or a few
primitives. Roads are rasterised into a ground map at ``GROUND_RES`` that gives the ground's class
(road, lane marking, sidewalk, terrain) where a ray lands, and is the BEV semantic ground truth.

Layouts: ``straight``, ``curve`` (a left or right arc of radius 45-90 m) and ``intersection``
(a four-way crossing where the ego turns left, right or goes straight). Traffic drives on the
right; roads have two lanes each way plus a parking strip on each side.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# --- classes -----------------------------------------------------------------------------------
# Ground classes (the BEV map) and object classes share one id space, so a ray hit has one class.
TERRAIN, SIDEWALK, ROAD, MARKING_WHITE, MARKING_YELLOW, PARKING = 0, 1, 2, 3, 4, 5
CAR, PEDESTRIAN, CYCLIST, BUILDING, POLE, VEGETATION = 6, 7, 8, 9, 10, 11
SKY = 12
CLASS_NAMES = (
    "terrain", "sidewalk", "road", "marking_white", "marking_yellow", "parking",
    "car", "pedestrian", "cyclist", "building", "pole", "vegetation", "sky",
)
DRIVABLE = (ROAD, MARKING_WHITE, MARKING_YELLOW, PARKING)
BOX_CLASSES = ("Car", "Pedestrian", "Cyclist")  # the labelled 3D box classes (mmdet3d KITTI names)
OBJECT_TO_BOX_LABEL = {CAR: 0, PEDESTRIAN: 1, CYCLIST: 2}

LANE_WIDTH = 3.5
LANES_PER_DIRECTION = 2
PARKING_WIDTH = 2.5
SIDEWALK_WIDTH = 3.5
ROAD_HALF_WIDTH = LANES_PER_DIRECTION * LANE_WIDTH + PARKING_WIDTH  # centre line to kerb
GROUND_RES = 0.1  # m per ground-map cell


# --- paths ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Path2D:
    """A smooth planar path ``xy [K, 2]`` sampled densely, with arclength ``s [K]`` and ``heading [K]``."""

    xy: np.ndarray
    s: np.ndarray
    heading: np.ndarray

    @classmethod
    def from_points(cls, xy: np.ndarray) -> "Path2D":
        xy = np.asarray(xy, dtype=np.float64)
        seg = np.diff(xy, axis=0)
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
        h = np.arctan2(seg[:, 1], seg[:, 0])
        heading = np.unwrap(np.concatenate([h, h[-1:]]))
        # headings at vertices: average of adjacent segments (smooth on arcs)
        heading[1:-1] = 0.5 * (heading[:-2] + heading[1:-1]) if len(h) > 1 else heading[1:-1]
        return cls(xy, s, heading)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def at(self, s: np.ndarray | float) -> np.ndarray:
        """Pose ``[..., 3]`` = (x, y, heading) at arclength ``s`` (extrapolated linearly past the ends)."""
        s = np.asarray(s, dtype=np.float64)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        h = np.interp(s, self.s, self.heading)
        for end, sign in ((0, -1), (-1, 1)):  # straight extrapolation
            beyond = (s - self.s[end]) * sign > 0
            if np.any(beyond):
                d = s - self.s[end]
                x = np.where(beyond, self.xy[end, 0] + d * np.cos(self.heading[end]), x)
                y = np.where(beyond, self.xy[end, 1] + d * np.sin(self.heading[end]), y)
        return np.stack([x, y, h], axis=-1)

    def offset(self, d: float) -> "Path2D":
        """The path shifted ``d`` metres to its left (negative: right)."""
        n = np.stack([-np.sin(self.heading), np.cos(self.heading)], axis=1)
        return Path2D.from_points(self.xy + d * n)

    def reversed(self) -> "Path2D":
        return Path2D.from_points(self.xy[::-1])


def straight(p0, heading: float, length: float, step: float = 0.5) -> np.ndarray:
    n = max(2, int(np.ceil(length / step)) + 1)
    t = np.linspace(0, length, n)
    return np.asarray(p0) + np.outer(t, [np.cos(heading), np.sin(heading)])


def arc(p0, heading: float, radius: float, angle: float, step: float = 0.5) -> np.ndarray:
    """An arc from ``p0`` with initial ``heading``, turning ``angle`` rad (positive: left) at ``radius``."""
    n = max(2, int(np.ceil(abs(angle) * radius / step)) + 1)
    sign = np.sign(angle)
    centre = np.asarray(p0) + sign * radius * np.array([-np.sin(heading), np.cos(heading)])
    a0 = heading - sign * np.pi / 2
    a = a0 + np.linspace(0, angle, n)
    return centre + radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def chain(*pieces: np.ndarray) -> np.ndarray:
    return np.concatenate([pieces[0]] + [p[1:] for p in pieces[1:]])


# --- world contents --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agent:
    """A moving road user following ``path`` at constant ``speed`` from arclength ``s0`` at t = 0."""

    track_id: int
    cls: int  # CAR / PEDESTRIAN / CYCLIST
    size: tuple[float, float, float]  # length, width, height
    path: Path2D
    s0: float
    speed: float
    color: tuple[float, float, float]

    def pose(self, t: float) -> np.ndarray:
        """``(x, y, heading)`` at time ``t``."""
        return self.path.at(self.s0 + self.speed * t)

    def velocity(self, t: float) -> np.ndarray:
        h = self.pose(t)[2]
        return self.speed * np.array([np.cos(h), np.sin(h)])


@dataclass(frozen=True)
class StaticObject:
    """A static solid: ``(x, y, yaw)`` and ``size`` (l, w, h) of its bottom-centred box."""

    cls: int
    x: float
    y: float
    yaw: float
    size: tuple[float, float, float]
    color: tuple[float, float, float]
    track_id: int = -1  # parked cars get track ids (they are labelled boxes)


@dataclass
class GroundMap:
    """The ground's class per cell: ``classes [H, W]`` uint8, cell (i, j) centred at ``origin + (j, i) * res``."""

    classes: np.ndarray
    origin: np.ndarray  # [2] world xy of cell (0, 0)
    res: float = GROUND_RES

    def lookup(self, xy: np.ndarray) -> np.ndarray:
        """Ground class at world ``xy [N, 2]`` (TERRAIN outside the map)."""
        j = np.floor((xy[:, 0] - self.origin[0]) / self.res + 0.5).astype(np.int64)
        i = np.floor((xy[:, 1] - self.origin[1]) / self.res + 0.5).astype(np.int64)
        h, w = self.classes.shape
        ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        out = np.full(len(xy), TERRAIN, dtype=np.uint8)
        out[ok] = self.classes[i[ok], j[ok]]
        return out


@dataclass
class World:
    """Everything in a sequence's world. ``route`` is the ego's lane; ``roads`` the road centre lines."""

    seed: int
    layout: str
    roads: list[Path2D]
    route: Path2D
    ground: GroundMap
    static: list[StaticObject]
    agents: list[Agent]
    lanes: list[Path2D] = field(default_factory=list)

    def boxes_at(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All solids at time ``t`` as primitives.

        Returns ``prims [P, 7]`` (x, y, z_bottom, l, w, h, yaw), ``prim_class [P]``,
        ``prim_object [P]`` (index into :meth:`objects_at`'s rows, -1 for unlabelled scenery) and
        ``prim_color [P, 3]``.
        """
        prims, cls, obj, col = [], [], [], []
        for k, (row, c, color) in enumerate(self._object_rows(t)):
            for p in _parts(row, c):
                prims.append(p)
                cls.append(c)
                obj.append(k if c in OBJECT_TO_BOX_LABEL else -1)
                col.append(color)
        return (np.asarray(prims, np.float64).reshape(-1, 7), np.asarray(cls, np.int32),
                np.asarray(obj, np.int32), np.asarray(col, np.float32).reshape(-1, 3))

    def _object_rows(self, t: float):
        for s in self.static:
            yield (s.x, s.y, 0.0, *s.size, s.yaw), s.cls, s.color
        for a in self.agents:
            x, y, h = a.pose(t)
            yield (x, y, 0.0, *a.size, h), a.cls, a.color

    def objects_at(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Labelled objects at ``t``: ``boxes [N, 9]`` (mmdet3d LiDAR convention + vx, vy in world),
        ``cls [N]``, ``track_ids [N]`` and ``row [N]`` (their index in the row order of :meth:`boxes_at`)."""
        boxes, cls, ids, rows = [], [], [], []
        k = 0
        for s in self.static:
            if s.cls in OBJECT_TO_BOX_LABEL:
                boxes.append((s.x, s.y, 0.0, *s.size, s.yaw, 0.0, 0.0))
                cls.append(s.cls), ids.append(s.track_id), rows.append(k)
            k += 1
        for a in self.agents:
            x, y, h = a.pose(t)
            v = a.velocity(t)
            boxes.append((x, y, 0.0, *a.size, h, v[0], v[1]))
            cls.append(a.cls), ids.append(a.track_id), rows.append(k)
            k += 1
        return (np.asarray(boxes, np.float64).reshape(-1, 9), np.asarray(cls, np.int32),
                np.asarray(ids, np.int64), np.asarray(rows, np.int64))


def _parts(row, cls) -> list[tuple]:
    """Primitives of one object (bottom-centred boxes): cars get a body and a cabin, trees a trunk and crown."""
    x, y, z, l, w, h, yaw = row
    if cls == CAR:
        body = h * 0.55
        c, s = np.cos(yaw), np.sin(yaw)
        back = -0.08 * l  # the cabin sits slightly behind the centre
        return [(x, y, z + 0.25, l, w, body - 0.25, yaw),
                (x + back * c, y + back * s, z + body, l * 0.55, w * 0.9, h - body, yaw),
                (x, y, z, l * 0.8, w * 0.85, 0.25, yaw)]  # under-body between the wheels
    if cls == VEGETATION:
        trunk = max(2.2, 0.45 * h)  # crowns start above pedestrians' and cyclists' heads
        return [(x, y, z, 0.4, 0.4, trunk, yaw), (x, y, z + trunk, l, w, h - trunk, yaw)]
    return [row]


# --- generation ------------------------------------------------------------------------------------
LAYOUTS = ("straight", "curve", "intersection")


def generate_world(seed: int, layout: str | None = None, route_length: float = 220.0) -> World:
    """A world for one sequence, deterministic from ``seed``; ``layout`` random when None."""
    rng = np.random.default_rng(seed)
    layout = layout or LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    lead = 40.0  # road behind the ego's start (so the first sweeps see road behind the car)
    if layout == "straight":
        roads = [Path2D.from_points(straight((-lead, 0.0), 0.0, route_length + lead))]
        route = roads[0].offset(-(LANE_WIDTH * 1.5))
    elif layout == "curve":
        radius = float(rng.uniform(45, 90))
        angle = float(rng.choice([-1, 1]) * rng.uniform(np.pi / 3, np.pi / 2))
        a = straight((-lead, 0.0), 0.0, lead + 40.0)
        b = arc(a[-1], 0.0, radius, angle)
        c = straight(b[-1], angle, route_length)
        roads = [Path2D.from_points(chain(a, b, c))]
        route = roads[0].offset(-(LANE_WIDTH * 1.5))
    else:
        d = 45.0  # intersection centre ahead of the ego's start
        main = Path2D.from_points(straight((-lead, 0.0), 0.0, route_length + lead))
        cross = Path2D.from_points(straight((d, -route_length), np.pi / 2, 2 * route_length))
        roads = [main, cross]
        turn = int(rng.integers(3))  # 0 left, 1 straight, 2 right
        lane_off = LANE_WIDTH * 1.5  # the outer lane
        if turn == 1:
            route = main.offset(-lane_off)
        else:
            # from the main road's right lane onto the cross road's right lane (x = d ± lane_off)
            sign = 1.0 if turn == 0 else -1.0
            radius = 12.0 if turn == 0 else 8.0
            x_start = d + sign * lane_off - radius
            a = straight((-lead, -lane_off), 0.0, x_start + lead)
            b = arc(a[-1], 0.0, radius, sign * np.pi / 2)
            c = straight(b[-1], sign * np.pi / 2, route_length)
            route = Path2D.from_points(chain(a, b, c))
    lanes = []
    for r in roads:
        for k in range(LANES_PER_DIRECTION):
            off = LANE_WIDTH * (k + 0.5)
            lanes.append(r.offset(-off))
            lanes.append(r.offset(off).reversed())
    ground = _rasterise_ground(roads, route)
    static = _place_static(rng, roads, ground)
    agents = _place_agents(rng, roads, lanes, route, static)
    return World(seed, layout, roads, route, ground, static, agents, lanes)


def _rasterise_ground(roads: list[Path2D], route: Path2D, margin: float = 90.0) -> GroundMap:
    """Classes per ground cell from the distance to road centre lines (and lane lines for markings)."""
    pts = np.concatenate([r.xy for r in roads] + [route.xy])
    lo = pts.min(axis=0) - margin
    hi = pts.max(axis=0) + margin
    shape = tuple(np.ceil((hi - lo)[::-1] / GROUND_RES).astype(int) + 1)  # (H, W)
    classes = np.full(shape, TERRAIN, dtype=np.uint8)

    def dist_to(paths: list[np.ndarray]) -> np.ndarray:
        seed = np.ones(shape, dtype=bool)
        for xy in paths:
            dense = _densify(xy, GROUND_RES / 2)
            ij = np.round((dense - lo) / GROUND_RES).astype(int)
            ok = (ij[:, 0] >= 0) & (ij[:, 0] < shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < shape[0])
            seed[ij[ok, 1], ij[ok, 0]] = False
        return ndimage.distance_transform_edt(seed) * GROUND_RES

    d_centre = dist_to([r.xy for r in roads])
    classes[d_centre <= ROAD_HALF_WIDTH + SIDEWALK_WIDTH] = SIDEWALK
    classes[d_centre <= ROAD_HALF_WIDTH] = PARKING
    classes[d_centre <= LANES_PER_DIRECTION * LANE_WIDTH] = ROAD
    near_crossing = _near_other_road(roads, lo, shape)
    # markings: double yellow centre line, dashed white lane dividers, solid white edge lines
    yellow = (np.abs(d_centre - 0.0) <= 0.12) & ~near_crossing
    classes[yellow] = MARKING_YELLOW
    for k in range(1, LANES_PER_DIRECTION):
        lines = [r.offset(sgn * LANE_WIDTH * k) for r in roads for sgn in (-1, 1)]
        d_line = dist_to([l.xy for l in lines])
        # dashes: 3 m painted, 6 m gap, along the road's arclength (taken from the x/y pattern)
        dash = _dash_mask(lines, lo, shape)
        classes[(d_line <= 0.08) & dash & ~near_crossing & (d_centre <= ROAD_HALF_WIDTH)] = MARKING_WHITE
    edge = np.abs(d_centre - LANES_PER_DIRECTION * LANE_WIDTH) <= 0.08
    classes[edge & ~near_crossing] = MARKING_WHITE
    return GroundMap(classes, lo)


def _densify(xy: np.ndarray, step: float) -> np.ndarray:
    seg = np.diff(xy, axis=0)
    n = np.maximum(1, np.ceil(np.linalg.norm(seg, axis=1) / step).astype(int))
    parts = [xy[i] + np.outer(np.arange(n[i]) / n[i], seg[i]) for i in range(len(seg))]
    return np.concatenate(parts + [xy[-1:]])


def _near_other_road(roads: list[Path2D], lo: np.ndarray, shape) -> np.ndarray:
    """Cells inside the crossing of two roads (no lane markings there)."""
    mask = np.zeros(shape, dtype=bool)
    if len(roads) < 2:
        return mask
    hw = ROAD_HALF_WIDTH
    for i, a in enumerate(roads):
        for b in roads[i + 1:]:
            d = np.linalg.norm(a.xy[:, None, :] - b.xy[None, ::4, :], axis=2)
            ia, ib = np.unravel_index(np.argmin(d), d.shape)
            c = a.xy[ia]
            j0, i0 = np.floor((c - hw - lo) / GROUND_RES).astype(int)
            j1, i1 = np.ceil((c + hw - lo) / GROUND_RES).astype(int) + 1
            mask[max(i0, 0):max(i1, 0), max(j0, 0):max(j1, 0)] = True
    return mask


def _dash_mask(lines: list[Path2D], lo: np.ndarray, shape, on: float = 3.0, period: float = 9.0) -> np.ndarray:
    """Cells whose nearest lane-line sample lies on a painted dash."""
    seed = np.ones(shape, dtype=bool)
    phase = np.zeros(shape, dtype=bool)
    for l in lines:
        dense = _densify(l.xy, GROUND_RES / 2)
        s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
        ij = np.round((dense - lo) / GROUND_RES).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < shape[1]) & (ij[:, 1] >= 0) & (ij[:, 1] < shape[0])
        seed[ij[ok, 1], ij[ok, 0]] = False
        phase[ij[ok, 1], ij[ok, 0]] = (s[ok] % period) < on
    _, (ii, jj) = ndimage.distance_transform_edt(seed, return_indices=True)
    return phase[ii, jj]


def _free(ground: GroundMap, box: tuple, placed: list[tuple], allowed: tuple[int, ...]) -> bool:
    """True when ``box`` (x, y, l, w, yaw) stands only on ``allowed`` ground and overlaps no placed box."""
    x, y, l, w, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    u = np.linspace(-0.5, 0.5, 5)
    grid = np.array([(a * l, b * w) for a in u for b in u])
    pts = np.stack([x + grid[:, 0] * c - grid[:, 1] * s, y + grid[:, 0] * s + grid[:, 1] * c], axis=1)
    if not np.isin(ground.lookup(pts), allowed).all():
        return False
    r = 0.5 * np.hypot(l, w)
    return all(np.hypot(x - px, y - py) > r + pr for px, py, pr in placed)


def _place_static(rng: np.random.Generator, roads: list[Path2D], ground: GroundMap) -> list[StaticObject]:
    out: list[StaticObject] = []
    placed: list[tuple] = []
    next_id = 1000
    for road in roads:
        for side in (-1, 1):
            # buildings: a row of blocks behind the sidewalk, with gaps
            s = float(rng.uniform(0, 8))
            while s < road.length:
                l, w, h = rng.uniform(8, 26), rng.uniform(8, 16), rng.uniform(5, 22)
                x, y, hd = road.at(s + l / 2)
                off = side * (ROAD_HALF_WIDTH + SIDEWALK_WIDTH + 1.0 + w / 2 + rng.uniform(0, 4))
                bx, by = x - np.sin(hd) * off, y + np.cos(hd) * off
                if _free(ground, (bx, by, l, w, hd), placed, (TERRAIN,)):
                    shade = rng.uniform(0.45, 0.85)
                    tint = rng.uniform(-0.08, 0.08, 3)
                    out.append(StaticObject(BUILDING, bx, by, hd, (l, w, h), tuple(np.clip(shade + tint, 0, 1))))
                    placed.append((bx, by, 0.5 * np.hypot(l, w)))
                s += l + rng.uniform(2, 12)
            # poles and trees on the sidewalk's outer half
            s = float(rng.uniform(0, 10))
            while s < road.length:
                x, y, hd = road.at(s)
                off = side * (ROAD_HALF_WIDTH + 0.4)
                px, py = x - np.sin(hd) * off, y + np.cos(hd) * off
                if rng.random() < 0.5:
                    item = StaticObject(POLE, px, py, hd, (0.25, 0.25, float(rng.uniform(5, 8))), (0.35, 0.35, 0.38))
                else:
                    cw = float(rng.uniform(2.0, 4.0))
                    item = StaticObject(VEGETATION, px, py, float(rng.uniform(0, np.pi)), (cw, cw, float(rng.uniform(4, 8))),
                                        (0.15, float(rng.uniform(0.35, 0.55)), 0.12))
                if _free(ground, (px, py, 0.3, 0.3, hd), placed, (SIDEWALK,)):
                    out.append(item)
                    placed.append((px, py, 0.3))
                s += float(rng.uniform(12, 30))
            # parked cars in the parking strip
            s = float(rng.uniform(0, 15))
            while s < road.length:
                l = float(rng.uniform(3.9, 4.9))
                x, y, hd = road.at(s)
                off = side * (LANES_PER_DIRECTION * LANE_WIDTH + PARKING_WIDTH / 2)
                cx, cy = x - np.sin(hd) * off, y + np.cos(hd) * off
                yaw = hd if side < 0 else hd + np.pi
                size = (l, float(rng.uniform(1.7, 2.0)), float(rng.uniform(1.4, 1.8)))
                if rng.random() < 0.55 and _free(ground, (cx, cy, l, size[1], yaw), placed, (PARKING,)):
                    out.append(StaticObject(CAR, cx, cy, yaw, size, _car_color(rng), track_id=next_id))
                    placed.append((cx, cy, 0.5 * np.hypot(l, size[1])))
                    next_id += 1
                s += l + float(rng.uniform(1.5, 14))
    return out


def _car_color(rng: np.random.Generator) -> tuple[float, float, float]:
    palette = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.9, 0.9, 0.9], [0.1, 0.1, 0.1],
                        [0.5, 0.5, 0.55], [0.2, 0.5, 0.2], [0.9, 0.7, 0.1]])
    return tuple(np.clip(palette[rng.integers(len(palette))] + rng.uniform(-0.05, 0.05, 3), 0, 1))


def _place_agents(rng, roads, lanes, route, static) -> list[Agent]:
    agents: list[Agent] = []
    tid = 0
    # vehicles: one speed per lane so they never run into each other; agents that would meet the
    # ego are removed once its motion is known (perception.sim.scene)
    for lane in lanes:
        speed = float(rng.uniform(5, 13))
        starts = np.sort(rng.uniform(0, lane.length, int(rng.integers(1, 4))))
        for s0 in starts[np.concatenate([[True], np.diff(starts) > 12.0])]:
            size = (float(rng.uniform(3.9, 5.2)), float(rng.uniform(1.7, 2.1)), float(rng.uniform(1.4, 2.0)))
            agents.append(Agent(tid, CAR, size, lane, float(s0), speed, _car_color(rng)))
            tid += 1
    for road in roads:
        for side in (-1, 1):
            walk = road.offset(side * (ROAD_HALF_WIDTH + SIDEWALK_WIDTH * 0.78))
            for _ in range(int(rng.integers(2, 6))):
                p = walk if rng.random() < 0.5 else walk.reversed()
                size = (float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.5, 0.7)), float(rng.uniform(1.55, 1.9)))
                color = tuple(rng.uniform(0.1, 0.9, 3))
                agents.append(Agent(tid, PEDESTRIAN, size, p, float(rng.uniform(0, p.length)), float(rng.uniform(0.8, 1.6)), color))
                tid += 1
            if rng.random() < 0.6:
                bike = road.offset(side * (ROAD_HALF_WIDTH + 1.4))  # the cycle path on the sidewalk
                bike = bike if side < 0 else bike.reversed()
                agents.append(Agent(tid, CYCLIST, (1.8, 0.6, 1.7), bike, float(rng.uniform(0, bike.length)),
                                    float(rng.uniform(3, 6)), tuple(rng.uniform(0.1, 0.9, 3))))
                tid += 1
    return agents
