"""Anchor trajectories: k-means over the training split's ego futures (GaussianFusion Sec. 3.4).

The anchors are the cascade head's starting set; they are computed once from the training
trajectories and saved with the model (a buffer in its checkpoint).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

FUTURE_STEPS = 8  # NAVSIM: 4 s at 2 Hz


def kmeans_anchors(trajs: np.ndarray, k: int = 20, iters: int = 50, seed: int = 0) -> np.ndarray:
    """``trajs [N, T, 3]`` (x, y, heading) → ``[k, T, 3]`` cluster centres of the xy paths (k-means++).

    Distances are over the waypoints' xy; each centre's heading is the circular mean of its members'.
    Raises when there are fewer distinct trajectories than ``k`` or non-finite values.
    """
    trajs = np.asarray(trajs, np.float64)
    if trajs.ndim != 3 or trajs.shape[2] != 3:
        raise ValueError(f"kmeans_anchors: expected trajectories [N, T, 3], got shape {trajs.shape}")
    if not np.isfinite(trajs).all():
        raise ValueError(f"kmeans_anchors: {int((~np.isfinite(trajs)).any((1, 2)).sum())} trajectories are not finite")
    x = trajs[:, :, :2].reshape(len(trajs), -1)
    if len(np.unique(np.round(x, 3), axis=0)) < k:
        raise ValueError(f"kmeans_anchors: need at least k={k} distinct trajectories, got {len(trajs)}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(k - 1):  # k-means++ seeding
        d2 = ((x[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.array(centres)
    for _ in range(iters):
        assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.array([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    heading = np.stack([np.arctan2(np.sin(trajs[assign == j, :, 2]).sum(0), np.cos(trajs[assign == j, :, 2]).sum(0))
                        if (assign == j).any() else np.zeros(trajs.shape[1]) for j in range(k)])
    return np.concatenate([c.reshape(k, -1, 2), heading[..., None]], axis=-1).astype(np.float32)


def planning_records(dataset, cache_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's ego status ``[N, 8]`` and ego future ``[N, 8, 3]`` (samples without a future are
    skipped and counted in a warning). ``cache_path`` (``.npz``) keeps them for the next run."""
    from perception.models.gaussian_fusion.features import ego_status

    if cache_path is not None and Path(cache_path).exists():
        with np.load(cache_path) as z:
            return z["status"], z["futures"]
    status, futures, skipped = [], [], 0
    for i in tqdm(range(len(dataset)), desc="planning records", leave=False):
        s = dataset[i]
        fut = s.targets.ego_future if s.targets is not None else None
        if fut is None or len(fut.poses) < FUTURE_STEPS or not np.isfinite(fut.poses).all():
            skipped += 1
            continue
        status.append(ego_status(s.frame, s.targets.driving_command).numpy())
        futures.append(np.asarray(fut.poses[:FUTURE_STEPS], np.float32))
    if skipped:
        warnings.warn(f"planning_records: {skipped} of {len(dataset)} samples have no full future, skipped", stacklevel=2)
    if not status:
        raise ValueError("planning_records: no sample has an ego future")
    out = np.stack(status), np.stack(futures)
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{cache_path}.{os.getpid()}.tmp.npz")
        np.savez(tmp, status=out[0], futures=out[1])
        os.replace(tmp, cache_path)
    return out


def dataset_key(cls, kwargs: dict) -> str:
    """A short stable key for a dataset config (type and arguments), to name its cached records."""
    return hashlib.sha1(repr((getattr(cls, "__name__", cls), sorted(kwargs.items()))).encode()).hexdigest()[:12]


def resolve_anchors(spec) -> np.ndarray | None:
    """Anchors from a config: None (they come with a checkpoint), an array, a ``.npy`` path, or
    ``dict(dataset=<dataset config>, k=20, cache_dir=...)`` — k-means over that dataset's futures."""
    if spec is None or isinstance(spec, np.ndarray):
        return spec
    if isinstance(spec, (str, Path)):
        return np.load(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        ds_cfg = dict(spec.pop("dataset"))
        k, cache_dir = int(spec.pop("k", 20)), spec.pop("cache_dir", None)
        if spec:
            raise ValueError(f"resolve_anchors: unknown keys {sorted(spec)}")
        cls = ds_cfg.pop("type")
        cache = Path(cache_dir) / f"planning_records_{dataset_key(cls, ds_cfg)}.npz" if cache_dir is not None else None
        _, futures = planning_records(cls(**ds_cfg), cache)
        return kmeans_anchors(futures, k)
    return np.asarray(spec, np.float32)
