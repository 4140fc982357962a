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
from pathlib import Path

from torch.utils.data import Dataset

from perception.structures import Sample


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
    rendered samples in memory (per process), so epochs after the first cost nothing.
    """

    def __init__(self, seeds: Sequence[int] = (0, 1), frames: int = 8, lidar: str = "hdl64",
                 render_cameras: bool = False, rigs: Sequence[str] = ("navsim",), cache: bool = True) -> None:
        from perception.sim.scene import SimConfig
        from perception.sim.world import BOX_CLASSES

        if frames < 1 or not len(seeds):
            raise ValueError(f"SimDataset: need >= 1 seed and frame, got seeds={list(seeds)} frames={frames}")
        self.seeds = [int(s) for s in seeds]
        self.frames = int(frames)
        self.config = SimConfig(frames=self.frames, lidar=lidar, rigs=tuple(rigs), render_cameras=render_cameras)
        self.cache = cache
        self._sequences: dict = {}
        self._samples: dict[int, Sample] = {}
        self.metainfo = {"classes": BOX_CLASSES, "source": "sim"}

    def __len__(self) -> int:
        return len(self.seeds) * self.frames

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"SimDataset: index {i} out of range for {len(self)} samples")
        if i in self._samples:
            return self._samples[i]
        from perception.sim.scene import SimSequence

        seed = self.seeds[i // self.frames]
        if seed not in self._sequences:
            self._sequences[seed] = SimSequence(seed, self.config)
        sample = self._sequences[seed][i % self.frames]
        if self.cache:
            self._samples[i] = sample
        return sample


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """mmengine ``collate_fn``: a batch stays a list of typed samples."""
    return list(batch)
