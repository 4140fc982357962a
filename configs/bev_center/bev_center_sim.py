"""BevCenterNet on the synthetic world, LiDAR only: the engine's test model and a baseline.

Train: python tools/train.py configs/bev_center/bev_center_sim.py
Test:  python tools/test.py configs/bev_center/bev_center_sim.py work_dirs/bev_center_sim/epoch_12.pth --show-dir vis
"""
from mmengine.config import read_base

from perception.engine.hooks import DetectionVisHook
from perception.models.bev_center import BevCenterNet

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403
    from .._base_.sim_detection import *  # noqa: F401,F403

# geometry, defined once and passed down
grid = dict(x_min=-40.0, y_min=-40.0, x_max=40.0, y_max=40.0, resolution=0.5)  # BevGrid
z_range = (-1.0, 4.0)  # ego frame (rear axle on the ground)

model = dict(type=BevCenterNet, grid=grid, z_range=z_range, classes=classes, width=32)


custom_hooks = [*custom_hooks, dict(type=DetectionVisHook, show_dir=None, xy_range=(-40.0, -40.0, 40.0, 40.0))]  # noqa: F405
work_dir = "work_dirs/bev_center_sim"
