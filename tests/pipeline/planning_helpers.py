"""A tiny GaussianFusion published as ``.safetensors`` + manifest, and small NAVSIM-like frames, for the planner tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from perception.geometry.cameras import PinholeCamera
from perception.sim.sensors import camera_mount
from perception.structures import (
    SE3, Boxes3D, Calibration, CameraImage, Detections, EgoPose, Frame, PlanningOutput, PointCloud, Sample,
)

CAMERAS = ("CAM_L0", "CAM_F0", "CAM_R0")
CAM = PinholeCamera(width=80, height=48, fx=40.0, fy=40.0, cx=40.0, cy=24.0)
CALIB = Calibration({"lidar": SE3.from_rt(np.eye(3), [0.0, 0.0, 1.8]),
                     **{n: camera_mount(1.5, 0.0, 1.5, yaw) for n, yaw in zip(CAMERAS, (55.0, 0.0, -55.0))}},
                    {n: CAM for n in CAMERAS})
CLASSES = ("Car", "Pedestrian", "Cyclist")
# as small as GaussianFusion gets; max_agents > 0 so that a detector's boxes become agent tokens.
# anchors=dict(...) is the k-means recipe the real config has: the model stage must drop it (the
# checkpoint holds the anchors), or building the model would read a dataset.
TINY_CONFIG = """
from perception.models.gaussian_fusion.model import GaussianFusion

grid = dict(x_min=-16.0, y_min=-16.0, x_max=16.0, y_max=16.0, resolution=1.0)
model = dict(type=GaussianFusion, lidar_grid=grid, map_grid=grid, image_size=(32, 64), num_gaussians=32, dim=32,
             blocks=1, image_widths=(8, 16, 32), lidar_widths=(8, 16, 32), knn=8, max_agents=8,
             anchors=dict(dataset=dict(type="not built"), k=20))
"""


def tiny_planner(directory: Path) -> tuple[Path, Path]:
    """``(config, checkpoint)``: the tiny config, and its seeded model published as ``.safetensors`` + manifest."""
    from mmengine.config import Config

    from perception.engine.checkpoint import atomic_save, export_safetensors, verify_manifest
    from perception.pipeline.model_stage import build_model

    config = directory / "gaussian_fusion_tiny.py"
    config.write_text(TINY_CONFIG)
    rng = np.random.default_rng(0)
    anchors = np.cumsum(rng.normal([1.5, 0.0, 0.0], [0.3, 0.3, 0.02], (20, 8, 3)), 1).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(dict(Config.fromfile(str(config)).model, anchors=anchors))
    atomic_save({"state_dict": model.state_dict()}, directory / "gf_tiny.pth")
    ckpt = export_safetensors(directory / "gf_tiny.pth", directory / "published")
    verify_manifest(ckpt)
    return config, ckpt


def planning_frame(i: int, cameras: tuple[str, ...] = CAMERAS, lidar: bool = True, command: int | None = 2) -> Frame:
    """Frame ``i`` (0.1 s apart, driving ahead at 8 m/s): small images, ~2k LiDAR points, odometry and a command."""
    rng = np.random.default_rng(i)
    t = 1.0 + 0.1 * i
    pts = np.concatenate([rng.uniform([-20, -20, -1.8], [20, 20, 1.0], (2000, 3)), rng.uniform(0, 1, (2000, 1))], 1)
    clouds = {"lidar": PointCloud(pts.astype(np.float32), ("x", "y", "z", "intensity"), t, "lidar")} if lidar else {}
    imgs = {n: CameraImage(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), CAM, t, n) for n in cameras}
    meta = {"ego_speed": 8.0, "ego_acceleration": 0.0, "ego_yaw_rate": 0.0}
    if command is not None:
        meta["driving_command"] = command
    missing = tuple(n for n in CAMERAS if n not in cameras) + (() if lidar else ("lidar",))
    return Frame(f"plan{i}", t, CALIB, clouds, imgs, EgoPose(t, SE3.from_rt(np.eye(3), [0.8 * i, 0.0, 0.0])),
                 missing=missing, source="test", meta=meta)


def detections(n: int = 3) -> Detections:
    """``n`` cars ahead (9-dim boxes with velocity, as MSF gives them)."""
    t = np.array([[8.0 + 4 * k, 3.5 * (-1) ** k, -1.6, 4.5, 1.9, 1.6, 0.0, 6.0, 0.0] for k in range(n)], np.float32)
    return Detections(Boxes3D(t.reshape(-1, 9), np.zeros(n, np.int64), CLASSES), np.linspace(0.9, 0.5, n))


class FakeDetector:
    """A detector stage: the fixed :func:`detections` for every frame, carrying the frame on."""

    name = "model:Fake"

    def __call__(self, item):
        from perception.pipeline.model_stage import FramePrediction

        frame = getattr(item, "frame", item)
        return FramePrediction(frame.token, frame.timestamp, "Fake", detections(), carried=frame)


def samples(n: int, **kw) -> list[Sample]:
    return [Sample(planning_frame(i, **kw)) for i in range(n)]


def assert_plan(out: PlanningOutput, num_gaussians: int = 32) -> None:
    poses = out.plan.trajectory.poses
    assert poses.shape == (8, 3) and np.isfinite(poses).all()
    np.testing.assert_allclose(out.plan.trajectory.timestamps, 0.5 * np.arange(1, 9))
    assert len(out.plan.candidates) == 20 and len(out.gaussians) == num_gaussians
