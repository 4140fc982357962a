"""MSF's RPN on the real KITTI sample frames: Velodyne + label_2 files → model → KITTI evaluator, end to end.

The fast tests use the overfit config's data and evaluators with a coarser grid and a tiny model; the
recorded run (README, "Real KITTI frames (overfit check)") is ``test_recorded_overfit_run`` (slow).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from perception.data.dataset import ReaderDataset, collate_samples
from perception.eval.kitti import KittiAP
from perception.eval.waymo import WaymoAP
from perception.models.msf.rpn import CenterPointRPN
from perception.structures import Detections

pytest.importorskip("spconv.pytorch")
pytestmark = pytest.mark.data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/msf/rpn_kitti_overfit.py"
TINY = dict(encoder=dict(channels=(8, 8, 16, 16), out_channels=16, blocks=1),
            backbone=dict(out_channels=(16, 32), layer_nums=(1, 1), strides=(1, 2)),
            neck=dict(out_channels=(16, 16), upsample_strides=(2, 4)),
            head=dict(shared_channels=16, head_channels=16, max_detections=50, score_threshold=0.05), bn_momentum=0.1)


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config.fromfile(str(CONFIG))


@pytest.fixture(scope="module")
def frames(cfg, data_root):
    kw = {k: v for k, v in cfg.train_dataloader.dataset.items() if k != "type"}
    return ReaderDataset(**{**kw, "root": str(data_root / "kitti")})


def build(metric: dict):
    kw = {k: v for k, v in metric.items() if k != "type"}
    return metric["type"](**kw)


def evaluate(cfg, batch, dets) -> dict[str, float]:
    out = {}
    for m in cfg.val_evaluator:
        metric = build(m)
        metric.process(batch, dets)
        out.update({f"{metric.prefix}/{k}": v for k, v in metric.compute_metrics(metric.results).items()})
    return out


def test_config_trains_and_scores_all_six_frames_in_kitti_geometry(cfg, frames):
    assert cfg.val_dataloader.dataset == cfg.train_dataloader.dataset  # evaluated on the frames it trains on
    assert cfg.train_dataloader.dataset.root == "../shared/data/kitti"
    assert [frames.reader.ids[i] for i in frames.indices] == [f"{i:06d}" for i in range(6)]
    g = cfg.model.grid
    assert (g["x_min"], g["x_max"], g["y_min"], g["y_max"], g["z_min"], g["z_max"]) == (0.0, 70.4, -40.0, 40.0, -3.0, 1.0)
    assert cfg.model.sweeps == 0 and not cfg.model.with_velocity  # single KITTI frames
    # every labelled Car lies inside the grid, in the Velodyne frame, bottom centre near the road (-1.73 m)
    cars = np.concatenate([s.targets.boxes.tensor[np.array(s.targets.boxes.names) == "Car"] for s in frames])
    assert len(cars) == 5
    assert (cars[:, 0] > g["x_min"]).all() and (cars[:, 0] < g["x_max"]).all()
    assert (np.abs(cars[:, 1]) < 40).all() and (np.abs(cars[:, 2] + 1.73) < 0.4).all()
    assert ((cars[:, 3] > cars[:, 4]) & (cars[:, 3] > 3.0)).all()  # l along the heading, w across


def test_ground_truth_scores_the_kitti_ceiling_and_100_with_repeat(cfg, frames):
    """Labels read into LiDAR boxes and written back as KITTI camera annotations match themselves at IoU 0.7."""
    batch = collate_samples([frames[i] for i in range(len(frames))])
    dets = []
    for s in batch:
        b = s.targets.boxes
        k = np.flatnonzero(b.labels >= 0)
        dets.append(Detections(b.select(k), np.linspace(0.9, 0.5, len(k), dtype=np.float32)))
    m = evaluate(cfg, batch, dets)
    assert m["kitti/Car_3D_AP40_moderate"] == pytest.approx(5.0)  # 3 moderate Cars: R40 caps at (3 - 1) / 40
    assert m["kitti_x41/Car_3D_AP40_moderate"] == pytest.approx(100.0)
    assert m["kitti_x41/Car_BEV_AP40_easy"] == pytest.approx(100.0)
    assert m["waymo/Car/L1_AP"] == pytest.approx(1.0)


def test_kitti_ap_repeat_is_checked():
    with pytest.raises(ValueError, match="repeat"):
        KittiAP(repeat=0)
    assert KittiAP(repeat=3).repeat == 3 and isinstance(WaymoAP(), WaymoAP)


def test_real_frames_through_the_rpn_and_kitti_evaluator(cfg, frames):
    """Read KITTI → voxels → RPN loss falling over a short overfit → predictions → KITTI / Waymo metrics."""
    torch.manual_seed(0)
    kw = {k: v for k, v in cfg.model.items() if k != "type"}
    grid = dict(kw["grid"], voxel_size=(0.4, 0.5, 0.2))  # coarser: 176 x 160 x 20 (x, y divisible by 16)
    model = CenterPointRPN(**{**kw, **TINY, "grid": grid})
    batch = collate_samples([frames[i] for i in (2, 3, 4)])  # the frames with easy / moderate Cars
    data = model.data_preprocessor(batch, True)
    pts = data["inputs"].points
    assert len(pts) == 3 and all(len(p) > 30_000 for p in pts)  # the front half of each real scan
    assert all(p[:, 0].min() >= 0.0 and p[:, 2].max() < 1.0 for p in pts)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    curve = []
    for _ in range(10):
        losses = model(**data, mode="loss")
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss))
    assert all(math.isfinite(v) for v in curve), curve
    assert curve[-1] < curve[0] / 5 and curve[-1] < min(curve[1:4]), curve
    model.eval()
    with torch.no_grad():
        dets = model(**model.data_preprocessor(batch, False), mode="predict")
    assert len(dets) == 3 and all(d.boxes.tensor.shape[1] == 7 for d in dets)
    m = evaluate(cfg, batch, dets)
    for key in ("kitti/Car_3D_AP40_moderate", "kitti_x41/Car_3D_AP40_moderate", "kitti/Car_BEV_AP40_moderate"):
        assert 0.0 <= m[key] <= 100.0, (key, m)
    assert 0.0 <= m["waymo/Car/L1_AP"] <= 1.0


@pytest.mark.slow
def test_recorded_overfit_run(tmp_path, data_root):
    """The README's run: tools/train.py then tools/test.py; loss falls >= 10x, Car 3D AP40 (moderate, x41) >= 90."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    root = str(data_root / "kitti")
    opts = [f"train_dataloader.dataset.root={root}", f"val_dataloader.dataset.root={root}",
            f"test_dataloader.dataset.root={root}"]
    subprocess.run([sys.executable, "tools/train.py", str(CONFIG), "--work-dir", str(tmp_path), "--cfg-options", *opts],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=3600)
    curve = [json.loads(line)["loss"] for f in sorted(tmp_path.glob("*/vis_data/scalars.json"))
             for line in f.read_text().splitlines() if '"loss"' in line]
    assert curve[-1] <= curve[0] / 10, curve
    ckpt = max(tmp_path.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    out = tmp_path / "metrics.json"
    subprocess.run([sys.executable, "tools/test.py", str(CONFIG), str(ckpt), "--work-dir", str(tmp_path),
                    "--out", str(out), "--cfg-options", *opts], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=1200)
    m = json.loads(out.read_text())
    assert m["kitti_x41/Car_3D_AP40_moderate"] >= 90.0, m
