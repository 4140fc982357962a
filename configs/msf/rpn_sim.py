"""MSF stage 1, CenterPoint RPN on the synthetic world at the papers' widths (a GPU config).

CenterPoint's voxel model (Yin et al., CVPR 2021; mmdet3d ``centerpoint_voxel01``): 0.1 m voxels,
sparse encoder 16-32-64-128 (+128 out, 2 z levels → 256 BEV channels), SECOND 128/256 with 5 + 5
layers, FPN 256 + 256 at stride 8, heads 64 wide, velocity on. Over +-51.2 m, z [-1, 4) m.

Train: python tools/train.py configs/msf/rpn_sim.py
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import OneCycleLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import SimDataset, collate_samples
from perception.engine.hooks import DetectionVisHook
from perception.eval.detection import CentreDistanceAP
from perception.models.msf.rpn import CenterPointRPN

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

# geometry, defined once and passed down: 1024 x 1024 x 40 voxels, heads at stride 8 (0.8 m cells)
grid = dict(x_min=-51.2, y_min=-51.2, z_min=-1.0, x_max=51.2, y_max=51.2, z_max=4.0, voxel_size=(0.1, 0.1, 0.125))
classes = ("Car", "Pedestrian", "Cyclist")

model = dict(
    type=CenterPointRPN, grid=grid, classes=classes, point_fields=("x", "y", "z", "intensity", "time_lag"),
    sweeps=2, with_velocity=True,  # the current sweep + 2 earlier ones (0.2 s), each point with its time lag
    encoder=dict(channels=(16, 32, 64, 128), out_channels=128, blocks=1),
    backbone=dict(out_channels=(128, 256), layer_nums=(5, 5), strides=(1, 2)),
    neck=dict(out_channels=(256, 256), upsample_strides=(1, 2)),
    head=dict(shared_channels=64, head_channels=64, max_detections=500, score_threshold=0.1),
    bn_momentum=0.01,
)

train_dataloader = dict(batch_size=4, num_workers=4, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_samples),
                        dataset=dict(type=SimDataset, seeds=list(range(0, 64)), frames=40, lidar="hdl64", sweeps=3))
val_dataloader = dict(batch_size=4, num_workers=4, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_samples),
                      dataset=dict(type=SimDataset, seeds=list(range(1000, 1008)), frames=40, lidar="hdl64", sweeps=3))
test_dataloader = val_dataloader
val_evaluator = dict(type=CentreDistanceAP, classes=classes, max_distance=50.0)
test_evaluator = val_evaluator

max_epochs = 20
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
# CenterPoint's schedule: AdamW, one-cycle to lr 1e-3, weight decay 0.01, gradient clip 35
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-3, weight_decay=1e-2), clip_grad=dict(max_norm=35.0))
param_scheduler = [dict(type=OneCycleLR, eta_max=1e-3, pct_start=0.4, div_factor=10.0, begin=0, end=max_epochs, by_epoch=True,
                        convert_to_iter_based=True)]

custom_hooks = [*custom_hooks, dict(type=DetectionVisHook, show_dir=None, xy_range=(-51.2, -51.2, 51.2, 51.2))]  # noqa: F405
work_dir = "work_dirs/msf_rpn_sim"
