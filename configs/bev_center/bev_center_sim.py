"""BevCenterNet on the synthetic world, LiDAR only: the engine's test model and a baseline.

Train: python tools/train.py configs/bev_center/bev_center_sim.py
Test:  python tools/test.py configs/bev_center/bev_center_sim.py work_dirs/bev_center_sim/epoch_12.pth --show-dir vis
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import SimDataset, collate_samples
from perception.engine.hooks import DetectionVisHook
from perception.eval.detection import CentreDistanceAP
from perception.models.bev_center import BevCenterNet

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

# geometry, defined once and passed down
grid = dict(x_min=-40.0, y_min=-40.0, x_max=40.0, y_max=40.0, resolution=0.5)  # BevGrid
z_range = (-1.0, 4.0)  # ego frame (rear axle on the ground)
classes = ("Car", "Pedestrian", "Cyclist")

model = dict(type=BevCenterNet, grid=grid, z_range=z_range, classes=classes, width=32)

train_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_samples),
                        dataset=dict(type=SimDataset, seeds=list(range(0, 16)), frames=10, lidar="hdl64"))
val_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_samples),
                      dataset=dict(type=SimDataset, seeds=[1000, 1001], frames=10, lidar="hdl64"))
test_dataloader = val_dataloader
val_evaluator = dict(type=CentreDistanceAP, classes=classes, max_distance=40.0)
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-3, weight_decay=1e-2), clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]

custom_hooks = [*custom_hooks, dict(type=DetectionVisHook, show_dir=None, xy_range=(-40.0, -40.0, 40.0, 40.0))]  # noqa: F405
work_dir = "work_dirs/bev_center_sim"
