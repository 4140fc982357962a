"""torch ``Dataset`` faces of the readers, for mmengine's dataloaders: every item is a :class:`Sample`.

``ReaderDataset`` serves any source :func:`perception.data.open_reader` knows (KITTI, nuScenes,
Waymo, NAVSIM, a synthetic dataset written by ``tools/create_data.py sim``); ``SimDataset`` renders
synthetic frames on the fly (deterministic per seed and frame, so every worker and every epoch sees
the same data without anything on disk). ``collate_samples`` keeps a batch a ``list[Sample]``: models
turn typed samples into tensors in their data preprocessor, never in a dict of string keys.

``metainfo`` carries ``classes`` (mmengine stores it in checkpoints as ``dataset_meta``).
"""
from __future__ import annotations

from collections.abc import Sequence
import hashlib
import os
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from perception.structures import Frame, PointCloud, Sample


class ReaderDataset(Dataset):
    """``open_reader(source, root, **reader_kwargs)`` as a Dataset; ``indices`` picks a subset."""

    def __init__(self, source: str, root: str | Path, classes: Sequence[str] | None = None,
                 indices: Sequence[int] | None = None, **reader_kwargs) -> None:
        from perception.data import open_reader

        self.reader = open_reader(source, root, **reader_kwargs)  # DataError names a missing root
        n = len(self.reader)
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"ReaderDataset: indices {bad[:5]} out of range for {n} samples in {root}")
        self.metainfo = {"classes": tuple(classes) if classes is not None else None, "source": source}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.reader.load(self.indices[i])


class SimDataset(Dataset):
    """Frames ``0..frames-1`` of the synthetic sequences ``seeds``, rendered on demand.

    ``render_cameras=False`` (LiDAR and ground truth only) makes a frame ~5x cheaper; ``cache`` keeps
    rendered samples in memory (per process), so epochs after the first cost nothing. ``cache_dir``
    also keeps them on disk (one pickle per frame, keyed by the simulator settings): dataloader
    workers then share what any of them rendered, and a second run renders nothing. It is a cache this
    class writes for itself; point it only at a folder you trust (pickles run code when read).

    ``sweeps=n`` attaches the ``n`` preceding frames' LiDAR to ``Frame.sweeps`` (newest first, moved
    into the current LiDAR frame through the ego poses, each with its own timestamp), as the mmdet3d
    reader does for nuScenes/Waymo sweeps. The first frames of a sequence have fewer (frame ``k`` has
    ``min(k, n)``): there is nothing earlier, and multi-frame models must cope with that.

    ``planning_scenes=True`` puts each frame's :class:`~perception.eval.pdms.PlanningScene` (agents
    over the next 4.9 s, drivable area, route, expert future) in ``Targets.meta["planning_scene"]`` for
    the PDM score; it is cached beside the rendering.

    ``drop_sensors`` (sensor names, e.g. ``("LIDAR_TOP",)`` or ``("CAM_F0",)``) removes those sensors
    from every frame and lists them in ``Frame.missing``, as a failed sensor would: for measuring how
    a model copes. Unknown names are an error.

    ``mount_jitter=(deg, m)`` mounts each sequence's cameras off the rig (rotated by up to ``deg`` and shifted by up
    to ``m`` per axis, drawn from the seed; :func:`perception.sim.sensors.jittered`), so the camera-LiDAR extrinsic
    differs from sequence to sequence: training data for calibration that cannot be solved by memorising the rig.
    """

    def __init__(self, seeds: Sequence[int] = (0, 1), frames: int = 8, lidar: str = "hdl64",
                 render_cameras: bool = False, rigs: Sequence[str] = ("navsim",), cache: bool = True,
                 sweeps: int = 0, cache_dir: str | Path | None = None, planning_scenes: bool = False,
                 drop_sensors: Sequence[str] = (), mount_jitter: Sequence[float] | None = None) -> None:
        from perception.sim.scene import SimConfig
        from perception.sim.world import BOX_CLASSES

        if frames < 1 or not len(seeds):
            raise ValueError(f"SimDataset: need >= 1 seed and frame, got seeds={list(seeds)} frames={frames}")
        self.seeds = [int(s) for s in seeds]
        self.frames = int(frames)
        jitter = None if mount_jitter is None else (float(mount_jitter[0]), float(mount_jitter[1]))
        self.config = SimConfig(frames=self.frames, lidar=lidar, rigs=tuple(rigs), render_cameras=render_cameras,
                                mount_jitter=jitter)
        self.cache = cache
        if sweeps < 0:
            raise ValueError(f"SimDataset: sweeps must be >= 0, got {sweeps}")
        self.sweeps = int(sweeps)
        self.planning_scenes = bool(planning_scenes)
        self.drop_sensors = tuple(drop_sensors)
        known = {"LIDAR_TOP", *(c.name for c in self.config.cameras())}
        if set(self.drop_sensors) - known:
            raise ValueError(f"SimDataset.drop_sensors: unknown {sorted(set(self.drop_sensors) - known)}; "
                             f"this rig has {sorted(known)}")
        self.cache_dir = None
        if cache_dir is not None:
            key = hashlib.sha1(repr(self.config).encode()).hexdigest()[:12]
            self.cache_dir = Path(cache_dir) / f"sim_{key}"
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._sequences: dict = {}
        self._samples: dict[int, Sample] = {}
        self.metainfo = {"classes": BOX_CLASSES, "source": "sim"}

    def __len__(self) -> int:
        return len(self.seeds) * self.frames

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"SimDataset: index {i} out of range for {len(self)} samples")
        sample = self._render(i)
        k = i % self.frames
        if self.drop_sensors:
            f = sample.frame
            frame = replace(f, lidar={k: v for k, v in f.lidar.items() if k not in self.drop_sensors},
                            cameras={k: v for k, v in f.cameras.items() if k not in self.drop_sensors},
                            missing=tuple(dict.fromkeys(f.missing + self.drop_sensors)))
            sample = replace(sample, frame=frame)
        if self.planning_scenes:
            meta = {**sample.targets.meta, "planning_scene": self._scene(i)}
            sample = replace(sample, targets=replace(sample.targets, meta=meta))
        if not self.sweeps or k == 0 or not sample.frame.lidar:
            return sample
        return with_sweeps(sample, [self._render(i - j).frame for j in range(1, min(k, self.sweeps) + 1)])

    def _sequence(self, seed: int):
        from perception.sim.scene import SimSequence

        if seed not in self._sequences:
            self._sequences = {seed: SimSequence(seed, self.config)}  # one world at a time: they are large
        return self._sequences[seed]

    def _scene(self, i: int):
        """Frame ``i``'s planning scene (cached on disk beside the rendering when ``cache_dir``)."""
        from perception.eval.pdms import PlanningScene
        from perception.sim.planning import planning_scene

        seed, k = self.seeds[i // self.frames], i % self.frames
        path = self.cache_dir / f"{seed:06d}_{k:04d}.scene.pkl" if self.cache_dir is not None else None
        scene = _read_cached(path, PlanningScene) if path is not None else None
        if scene is None:
            scene = planning_scene(self._sequence(seed), k)
            if path is not None:
                _write_cached(path, scene)
        return scene

    def _render(self, i: int) -> Sample:
        """Frame ``i`` without sweeps (cached when ``cache``)."""
        if i in self._samples:
            return self._samples[i]
        seed, k = self.seeds[i // self.frames], i % self.frames
        path = self.cache_dir / f"{seed:06d}_{k:04d}.pkl" if self.cache_dir is not None else None
        sample = _read_cached(path, Sample) if path is not None else None
        if sample is None:
            sample = self._sequence(seed)[k]
            if path is not None:
                _write_cached(path, sample)
        if self.cache:
            self._samples[i] = sample
        return sample


def _write_cached(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(obj, protocol=5))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none


def _read_cached(path: Path, kind: type):
    """A cached object of type ``kind``, or None when absent or unreadable (then it is made again and rewritten)."""
    try:
        sample = pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or from another version: say so, render again
        warnings.warn(f"SimDataset: ignoring unreadable cache file {path} ({type(e).__name__}: {e})", stacklevel=3)
        return None
    return sample if isinstance(sample, kind) else None


def with_sweeps(sample: Sample, past: Sequence[Frame]) -> Sample:
    """``sample`` with ``past`` frames' LiDAR (newest first) as ``Frame.sweeps`` in its LiDAR frame.

    Every frame needs an ego pose and one LiDAR; sweeps keep their own timestamps and fields.
    """
    frame = sample.frame
    if frame.ego_pose is None or any(f.ego_pose is None for f in past):
        raise ValueError(f"with_sweeps ({frame.token}): every frame needs an ego pose to align sweeps")
    name, cloud = next(iter(frame.lidar.items()))
    cur_from_world = (frame.ego_pose.world_from_ego @ frame.calib.transform("ego", name)).inverse()
    sweeps = []
    for f in past:
        if [t for t in f.lidar] != [name]:
            raise ValueError(f"with_sweeps ({frame.token}): sweep {f.token} has LiDARs {tuple(f.lidar)}, want {name!r}")
        pc = f.lidar[name]
        cur_from_past = cur_from_world @ f.ego_pose.world_from_ego @ f.calib.transform("ego", name)
        pts = pc.points.copy()
        pts[:, :3] = cur_from_past.apply(pts[:, :3].astype(np.float64)).astype(np.float32)
        sweeps.append(PointCloud(pts, pc.fields, pc.timestamp, name))
    return Sample(replace(frame, sweeps=tuple(sweeps)), sample.targets)


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """mmengine ``collate_fn``: a batch stays a list of typed samples."""
    return list(batch)
