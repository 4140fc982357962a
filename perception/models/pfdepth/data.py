"""Synthetic pinhole + fisheye depth samples for PFDepth, rendered once and kept small.

:class:`PFDepthSimDataset` renders frames of :class:`~perception.sim.scene.SimSequence` (rigs
``navsim`` + ``fisheye``: 3 pinholes, 4 190° fisheyes, per-pixel depth) and keeps, per frame, only
the cameras asked for, already at the training size: images area-resized, camera models rescaled
(:func:`~perception.pipeline.camera.scale_camera`), depth sampled at the resized pixel
centres (nearest; z for pinholes, range along the ray for fisheyes, 0 = none). No LiDAR is kept.
Frames ``0, every, 2 every, ...`` of each sequence are used (consecutive frames at 10 Hz are nearly
the same picture). ``cache_dir`` keeps one pickle per sequence (a few MB); it is a cache this class
writes for itself: point it only at a folder you trust (pickles run code when read).
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from perception.models.pfdepth.views import view_type
from perception.pipeline.camera import scale_camera
from perception.structures import CameraImage, Calibration, DepthMap, Frame, Sample, Targets


def shrink_sample(sample: Sample, cameras: Sequence[str], sizes: dict) -> Sample:
    """``sample`` with only ``cameras``, each at ``sizes[view_type]`` = ``(W, H)``, depth alongside."""
    import cv2

    f, t = sample.frame, sample.targets
    cams, depth, models = {}, {}, {}
    for name in cameras:
        img = f.cameras[name]
        W, H = sizes[view_type(img.camera)]
        model = scale_camera(img.camera, W, H)
        image = cv2.resize(img.image, (W, H), interpolation=cv2.INTER_AREA)
        cams[name] = CameraImage(image, model, img.timestamp, img.frame_id)
        models[name] = model
        d = t.depth[name]
        # nearest full-resolution pixel to each resized pixel centre
        ys = np.clip(np.round((np.arange(H) + 0.5) * d.depth.shape[0] / H - 0.5).astype(int), 0, d.depth.shape[0] - 1)
        xs = np.clip(np.round((np.arange(W) + 0.5) * d.depth.shape[1] / W - 0.5).astype(int), 0, d.depth.shape[1] - 1)
        depth[name] = DepthMap(d.depth[np.ix_(ys, xs)], name, d.timestamp, d.kind)
    calib = Calibration({n: f.calib.ego_from_sensor[n] for n in cameras}, models)
    frame = Frame(f.token, f.timestamp, calib, {}, cams, f.ego_pose, source=f.source, meta=dict(f.meta))
    return Sample(frame, Targets(t.boxes, depth=depth))


class PFDepthSimDataset(Dataset):
    """``len(seeds) * ceil(frames / every)`` compact samples (see the module docstring)."""

    def __init__(self, seeds: Sequence[int], cameras: Sequence[str], sizes: dict, frames: int = 40, every: int = 5,
                 cache_dir: str | Path | None = None) -> None:
        if not len(seeds) or frames < 1 or every < 1:
            raise ValueError(f"PFDepthSimDataset: need seeds, frames >= 1, every >= 1; got {list(seeds)}, {frames}, {every}")
        self.seeds, self.cameras = [int(s) for s in seeds], tuple(cameras)
        self.sizes = {k: tuple(int(x) for x in v) for k, v in sizes.items()}
        self.frames, self.every = int(frames), int(every)
        self.indices = list(range(0, self.frames, self.every))
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._seq: dict[int, list[Sample]] = {}
        self.metainfo = {"source": "sim", "cameras": self.cameras}

    def __len__(self) -> int:
        return len(self.seeds) * len(self.indices)

    def _path(self, seed: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha1(repr((self.cameras, sorted(self.sizes.items()), self.frames, self.every)).encode()).hexdigest()[:10]
        return self.cache_dir / f"pfdepth_{key}" / f"seed_{seed}.pkl"

    def sequence(self, seed: int) -> list[Sample]:
        if seed in self._seq:
            return self._seq[seed]
        path = self._path(seed)
        if path is not None and path.is_file():
            with open(path, "rb") as fh:
                samples = pickle.load(fh)
        else:
            from perception.sim.scene import SimConfig, SimSequence

            seq = SimSequence(seed, SimConfig(frames=self.frames, rigs=("navsim", "fisheye")))
            samples = [shrink_sample(seq[i], self.cameras, self.sizes) for i in self.indices]
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as fh:
                    pickle.dump(samples, fh)
                tmp.replace(path)
        self._seq[seed] = samples
        return samples

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"PFDepthSimDataset: index {i} out of range for {len(self)} samples")
        k = len(self.indices)
        return self.sequence(self.seeds[i // k])[i % k]
