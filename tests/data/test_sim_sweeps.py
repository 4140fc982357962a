"""SimDataset's past sweeps (aligned into the current LiDAR frame) and its on-disk render cache."""
from __future__ import annotations

import numpy as np
import pytest

from perception.data.dataset import SimDataset


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("simcache")
    return root, SimDataset(seeds=[3], frames=4, sweeps=3, cache_dir=root)


def _in_static_boxes(sample, xyz_lidar: np.ndarray) -> int:
    """Points (current LiDAR frame) inside the current frame's parked cars (zero velocity)."""
    boxes = sample.targets.boxes
    static = boxes.select(np.flatnonzero((np.abs(boxes.velocity).sum(1) == 0) & (boxes.labels == 0)))
    ego = sample.frame.calib.transform("ego", next(iter(sample.frame.lidar))).apply(xyz_lidar.astype(np.float64))
    return int(static.points_in_boxes(ego).any(1).sum())


def test_sweeps_are_the_earlier_frames_aligned_to_the_current_one(cached):
    _, ds = cached
    s = ds[3]
    assert [round(sw.timestamp, 3) for sw in s.frame.sweeps] == [0.3, 0.2, 0.1]  # newest first
    assert len(ds[1].frame.sweeps) == 1 and ds[0].frame.sweeps == ()  # a sequence's start has fewer
    now = _in_static_boxes(s, s.frame.points.xyz)
    assert now > 50
    missed = []
    for j, sw in enumerate(s.frame.sweeps, start=1):
        raw = ds._render(3 - j).frame.points.xyz  # the same sweep, not moved: the ego drove on since
        aligned = _in_static_boxes(s, sw.xyz)
        assert aligned > 0.75 * now, (j, aligned, now)  # parked cars stay where they were
        missed.append(now - _in_static_boxes(s, raw))
    assert missed[0] < missed[1] < missed[2] and missed[2] > 0.4 * now  # unaligned, they drift off the cars


def test_cache_serves_a_new_dataset_and_survives_a_corrupt_file(cached):
    root, ds = cached
    first = ds[2]
    files = sorted(p.name for p in root.rglob("*.pkl"))
    assert files == [f"000003_{k:04d}.pkl" for k in range(4)]
    again = SimDataset(seeds=[3], frames=4, sweeps=3, cache_dir=root)
    assert again._sequences == {}  # nothing simulated yet
    second = again[2]
    assert again._sequences == {}  # served from disk
    assert np.array_equal(first.frame.sweeps[1].points, second.frame.sweeps[1].points)
    assert second.frame.meta["index"] == 2 and np.array_equal(first.targets.boxes.tensor, second.targets.boxes.tensor)
    path = next(root.rglob("000003_0001.pkl"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    fresh = SimDataset(seeds=[3], frames=4, cache_dir=root)
    with pytest.warns(UserWarning, match="unreadable cache file"):
        redone = fresh[1]
    assert np.array_equal(redone.frame.points.points, ds._render(1).frame.points.points)
    assert len(path.read_bytes()) > 1000  # rewritten whole


def test_drop_sensors_removes_them_and_says_so(cached):
    root, _ = cached
    ds = SimDataset(seeds=[3], frames=4, sweeps=3, cache_dir=root, drop_sensors=("LIDAR_TOP",))
    s = ds[2]
    assert s.frame.lidar == {} and "LIDAR_TOP" in s.frame.missing and s.frame.sweeps == ()
    assert s.targets is not None and len(s.targets.boxes) > 0  # ground truth is untouched
    with pytest.raises(ValueError, match="unknown"):
        SimDataset(seeds=[3], frames=4, drop_sensors=("CAM_NOPE",))
