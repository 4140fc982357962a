"""Timestamp synchronization: a stream of sensor messages → one :class:`~perception.structures.Frame` per reference-LiDAR sweep.

Messages (:class:`SensorMessage`: a LiDAR sweep, a camera image or an ego pose) may arrive out of
time order by at most ``window`` seconds (a bounded reordering buffer, as a ROS message filter or a
Ray queue delivers them). A reference sweep at ``t`` is emitted once a message later than
``t + tolerance + window`` has been seen (or at :meth:`Synchronizer.flush`); it takes, for every other
sensor of the rig, the buffered message nearest in time within ``tolerance``. A sensor with none is
named in ``Frame.missing`` and counted; the ego pose at ``t`` is interpolated between the bracketing
pose messages (``"ego_pose"`` is named in ``missing`` when there are none). Nothing disappears
uncounted: out-of-order arrivals, messages that arrive after the frame they belonged to was emitted
(``late``), reference sweeps that arrive after a later frame was emitted (dropped to keep the output
in order, ``late`` of the reference sensor) and messages discarded without joining a frame
(``unused``) are all counted in :class:`SyncStats`.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np

from perception.structures import Calibration, CameraImage, EgoPose, Frame, PointCloud, Sample

EGO_POSE = "ego_pose"


@dataclass(frozen=True)
class SensorMessage:
    """One timestamped message of ``sensor`` (a calibration sensor name, or ``"ego_pose"`` for poses).

    ``token`` (optional) names the frame a reference sweep starts; the synchronizer makes it the Frame's
    token. ``meta`` (optional, a reference sweep's) becomes the Frame's ``meta``: what the car knows
    beside its sensors (odometry, the driving command).
    """

    sensor: str
    timestamp: float
    payload: PointCloud | CameraImage | EgoPose
    token: str = ""
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not np.isfinite(self.timestamp):
            raise ValueError(f"SensorMessage.timestamp ({self.sensor}): must be finite, got {self.timestamp}")
        if not isinstance(self.payload, (PointCloud, CameraImage, EgoPose)):
            raise ValueError(f"SensorMessage.payload ({self.sensor}): PointCloud, CameraImage or EgoPose, "
                             f"got {type(self.payload).__name__}")


@dataclass
class SyncStats:
    """Per-sensor counts of what the synchronizer saw (see the module docstring for each reason)."""

    frames: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    out_of_order: dict[str, int] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    unused: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _inc(d: dict[str, int], key: str, n: int = 1) -> None:
    if n:
        d[key] = d.get(key, 0) + n


class Synchronizer:
    """Assemble frames from :class:`SensorMessage` s; ``push`` one message, get the frames it completes.

    Args:
        calib: the rig; every sensor of it except ``reference`` is matched to each reference sweep
            (or only ``sensors``, when given).
        reference: the LiDAR whose sweeps define the frames.
        tolerance: seconds; a message joins a frame only within this of the sweep's timestamp.
        window: seconds; the most a message may arrive out of time order (the buffer's bound).
        max_pose_gap: seconds; ego poses further apart than this are not interpolated between.
    """

    def __init__(self, calib: Calibration, reference: str, tolerance: float = 0.05, window: float = 0.1,
                 sensors: Iterable[str] | None = None, max_pose_gap: float = 0.5, source: str = "sync") -> None:
        if reference not in calib.ego_from_sensor:
            raise ValueError(f"Synchronizer: reference {reference!r} not in the calibration {calib.sensors}")
        if tolerance < 0 or window < 0:
            raise ValueError(f"Synchronizer: tolerance and window must be >= 0, got {tolerance}, {window}")
        self.calib, self.reference, self.tolerance, self.window = calib, reference, tolerance, window
        self.sensors = tuple(s for s in (calib.sensors if sensors is None else sensors) if s != reference)
        unknown = [s for s in self.sensors if s not in calib.ego_from_sensor]
        if unknown:
            raise ValueError(f"Synchronizer: sensors {unknown} not in the calibration {calib.sensors}")
        self.max_pose_gap, self.source = max_pose_gap, source
        self.stats = SyncStats()
        self._buf: dict[str, list[SensorMessage]] = {s: [] for s in (reference, *self.sensors, EGO_POSE)}
        self._used: set[int] = set()  # id() of buffered messages that joined a frame
        self._latest: dict[str, float] = {}
        self._max_seen = -np.inf
        self._emitted: deque[float] = deque(maxlen=64)

    # ------------------------------------------------------------------------------------------
    def frames(self, messages: Iterable[SensorMessage]) -> Iterator[Frame]:
        """All frames of a message stream, in time order (flushes at the end)."""
        for msg in messages:
            yield from self.push(msg)
        yield from self.flush()

    def push(self, msg: SensorMessage) -> list[Frame]:
        s, t, st = msg.sensor, msg.timestamp, self.stats
        if s not in self._buf:
            _inc(st.unknown, s)
            return []
        _inc(st.messages, s)
        if t < self._latest.get(s, -np.inf):
            _inc(st.out_of_order, s)
        self._latest[s] = max(t, self._latest.get(s, -np.inf))
        self._max_seen = max(self._max_seen, t)
        last = self._emitted[-1] if self._emitted else -np.inf
        if s == self.reference:
            if t <= last:  # its frame would come out of order: dropped, counted
                _inc(st.late, s)
                _inc(st.unused, s)
                return self._ready()
        elif s != EGO_POSE:
            if any(abs(te - t) <= self.tolerance for te in self._emitted):
                _inc(st.late, s)
            if t <= last - self.tolerance:  # can join no later frame either
                _inc(st.unused, s)
                return self._ready()
        bisect.insort(self._buf[s], msg, key=lambda m: m.timestamp)
        return self._ready()

    def flush(self) -> list[Frame]:
        """Emit every buffered reference sweep (end of stream); unmatched messages are counted ``unused``."""
        out = [self._emit(self._buf[self.reference].pop(0)) for _ in range(len(self._buf[self.reference]))]
        for s, buf in self._buf.items():
            if s != EGO_POSE:
                _inc(self.stats.unused, s, sum(id(m) not in self._used for m in buf))
                buf.clear()
        return out

    # ------------------------------------------------------------------------------------------
    def _ready(self) -> list[Frame]:
        ref, out = self._buf[self.reference], []
        while ref and ref[0].timestamp + self.tolerance + self.window <= self._max_seen:
            out.append(self._emit(ref.pop(0)))
        return out

    def _emit(self, ref: SensorMessage) -> Frame:
        t, tol = ref.timestamp, self.tolerance
        lidar: dict[str, PointCloud] = {self.reference: ref.payload}
        cameras: dict[str, CameraImage] = {}
        missing = []
        for s in self.sensors:
            cands = [m for m in self._buf[s] if abs(m.timestamp - t) <= tol]
            if not cands:
                missing.append(s)
                _inc(self.stats.missing, s)
                continue
            m = min(cands, key=lambda m: abs(m.timestamp - t))
            self._used.add(id(m))
            (cameras if isinstance(m.payload, CameraImage) else lidar)[s] = m.payload
        pose = self._pose_at(t)
        if pose is None:
            missing.append(EGO_POSE)
            _inc(self.stats.missing, EGO_POSE)
        self._emitted.append(t)
        self.stats.frames += 1
        self._prune(t)
        return Frame(token=ref.token or f"{self.source}_{t:.6f}", timestamp=t, calib=self.calib, lidar=lidar,
                     cameras=cameras, ego_pose=pose, missing=tuple(missing), source=self.source, meta=ref.meta)

    def _pose_at(self, t: float) -> EgoPose | None:
        """The ego pose at ``t``: an exact pose message, or slerp/lerp between the bracketing two."""
        poses = self._buf[EGO_POSE]
        times = [m.timestamp for m in poses]
        i = bisect.bisect_left(times, t)
        if i < len(poses) and abs(times[i] - t) <= 1e-9:
            return poses[i].payload
        if 0 < i < len(poses) and times[i] - times[i - 1] <= self.max_pose_gap:
            a, b = poses[i - 1].payload, poses[i].payload
            alpha = (t - a.timestamp) / (b.timestamp - a.timestamp)
            return EgoPose(t, a.world_from_ego.interpolate(b.world_from_ego, alpha))
        return None

    def _prune(self, t: float) -> None:
        """Drop what no later frame (timestamp > t) can use."""
        for s in (self.reference, *self.sensors):
            buf = self._buf[s]
            k = 0
            while k < len(buf) and buf[k].timestamp <= t - self.tolerance:
                if id(buf[k]) not in self._used:
                    _inc(self.stats.unused, s)
                k += 1
            for m in buf[:k]:
                self._used.discard(id(m))
            del buf[:k]
        poses = self._buf[EGO_POSE]  # keep the last pose at or before t (to interpolate after it)
        times = [m.timestamp for m in poses]
        k = bisect.bisect_right(times, t) - 1
        if k > 0:
            del poses[:k]


def sample_messages(samples: Iterable[Sample], with_cameras: bool = True) -> Iterator[SensorMessage]:
    """The sensor-message stream of a sequence of samples (a ``SimSequence``, a reader): per sample, the
    ego pose, every LiDAR sweep (carrying the frame's token and meta) and every camera image, in that order."""
    for sample in samples:
        f = sample.frame
        if f.ego_pose is not None:
            yield SensorMessage(EGO_POSE, f.ego_pose.timestamp, f.ego_pose)
        for name, cloud in f.lidar.items():
            yield SensorMessage(name, cloud.timestamp, cloud, token=f.token, meta=f.meta)
        if with_cameras:
            for name, img in f.cameras.items():
                yield SensorMessage(name, img.timestamp, img)
