"""Benchmark: ingest of a ROS recording of 120k-point clouds against reading the same file's raw bytes, one run.

The recording: ``CLOUDS`` LiDAR sweeps at 10 Hz (KITTI 000001, 120,268 points, ``x y z intensity`` float32,
16-byte points; a synthetic 124k-point HDL-64 sweep when ``../shared/data`` is absent), written with rosbags'
writers as a ROS1 bag and a ROS2 MCAP (uncompressed, as recorders write by default). 10 s of sweeps: the
rate is a throughput, and a reader's per-file set-up (the index, the rig pre-scan, its first read buffers:
~5 ms here) is a small part of a recording of minutes; in a 3-s file it would be half of a warm ingest.
Ours: open the file with :class:`perception.data.rosbag.RosbagReader` and stream every message, each sweep decoded and checked
into a ``PointCloud``. Two peers: reading the file's bytes in 1 MiB blocks (from the page cache: a memory
copy), and the format library reading every message's raw bytes (rosbags' ROS1 reader, mcap's reader); all warm
(page cache), rounds interleaved. Then the same ingest and raw read from storage: the file's pages are dropped
from the page cache (``posix_fadvise(DONTNEED)``, Linux) before each timed read (rows ``... from storage``).
``speedup`` = peer time / ours = our rate as a fraction of the raw read rate; ``realtime_factor`` = recorded
seconds / ingest seconds.

    python -m tools.bench.replay        # from the repository root
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CLOUDS, ROUNDS = 100, 5
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _sweep():
    """``(points [N, 4] float32, source)``: KITTI 000001 or a synthetic sweep."""
    import numpy as np

    kitti = DATA / "kitti/training/velodyne/000001.bin"
    if kitti.is_file():
        return np.fromfile(kitti, np.float32).reshape(-1, 4), "kitti 000001"
    from perception.sim.scene import SimConfig, SimSequence

    f = SimSequence(7, SimConfig(frames=1, render_cameras=False))[0].frame
    return f.points.points[:, :4], "synthetic hdl64"


def _calib():
    import numpy as np

    from perception.geometry.se3 import SE3
    from perception.structures import Calibration

    return Calibration({"lidar": SE3(np.eye(4))})


def _samples(points, n: int):
    from perception.structures import Frame, PointCloud, Sample

    calib = _calib()
    for i in range(n):
        t = 1000.0 + 0.1 * i
        yield Sample(Frame(str(i), t, calib, {"lidar": PointCloud(points, ("x", "y", "z", "intensity"), t, "lidar")}))


def _drop_cache(path: Path) -> bool:
    """Evicts ``path``'s pages from the page cache (its next read comes from storage); False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _raw_read(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            n += len(block)
    return n


def _records(path: Path, fmt: str) -> int:
    """The format library's own read of every message's raw bytes (no deserialization)."""
    if fmt == "ros1":
        from rosbags.rosbag1 import Reader

        with Reader(path) as r:
            return sum(len(raw) for _, _, raw in r.messages())
    from mcap.reader import make_reader

    with open(next(path.glob("*.mcap")), "rb") as f:
        return sum(len(m.data) for _, _, m in make_reader(f).iter_messages())


def _ingest(path: Path) -> int:
    from perception.data.rosbag import RosbagReader

    reader = RosbagReader(path)
    clouds = sum(1 for m in reader.messages() if m.sensor == "lidar")
    assert not reader.stats.malformed and not reader.stats.truncated
    return clouds


def _timed(fn, *args, cold: Path | None = None) -> float:
    """Seconds one call of ``fn(*args)`` takes; with ``cold``, that file's pages are dropped from the cache first."""
    if cold is not None:
        _drop_cache(cold)
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def rows(repeats: int = ROUNDS) -> list[dict]:
    from perception.data.rosbag_export import write_recording

    points, source = _sweep()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, name in (("ros1", "bench.bag"), ("ros2-mcap", "bench_mcap")):
            path = write_recording(_samples(points, CLOUDS), _calib(), Path(tmp) / name, fmt)
            storage = path if path.is_file() else next(path.glob("*.mcap"))
            size = storage.stat().st_size

            def row(op: str, peer: str, ours: list[float], theirs: list[float]) -> dict:
                o, p = statistics.median(ours), statistics.median(theirs)
                return {
                    "bench": "replay", "op": op, "impl": "RosbagReader.messages (decode + checks)", "peer": peer,
                    "params": {"data": source, "points": int(points.shape[0]), "clouds": CLOUDS, "hz": 10,
                               "point_step": 16, "file_mb": round(size / 1e6, 1), "rounds": repeats},
                    "median_ms": round(o * 1e3, 3), "peer_median_ms": round(p * 1e3, 3), "speedup": round(p / o, 3),
                    "mb_per_s": round(size / o / 1e6, 1), "peer_mb_per_s": round(size / p / 1e6, 1),
                    "clouds_per_s": round(CLOUDS / o, 1), "realtime_factor": round(CLOUDS * 0.1 / o, 1),
                }

            assert _ingest(path) == CLOUDS  # warm: page cache, typestores, numpy
            _raw_read(storage)
            ours, peer, lib = [], [], []
            for _ in range(repeats):  # interleaved, so all see the same machine load
                peer.append(_timed(_raw_read, storage))
                lib.append(_timed(_records, path, fmt))
                ours.append(_timed(_ingest, path))
            library = "rosbags Reader" if fmt == "ros1" else "mcap reader"
            out += [row(f"ingest {fmt}", "raw file read (1 MiB blocks)", ours, peer),
                    row(f"ingest {fmt}", f"{library}: raw message bytes, not deserialized", ours, lib)]
            if _drop_cache(storage):  # the same from storage
                ours, peer = [], []
                for _ in range(repeats):
                    peer.append(_timed(_raw_read, storage, cold=storage))
                    ours.append(_timed(_ingest, path, cold=storage))
                out.append(row(f"ingest {fmt} from storage", "raw file read (1 MiB blocks), from storage", ours, peer))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(rows(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS), indent=1))
