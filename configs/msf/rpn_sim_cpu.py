"""MSF stage 1, CenterPoint RPN on the synthetic world, small enough to train on a CPU.

Voxel CenterPoint (0.2 m voxels over +-40 m) with velocity: the proposals MSF propagates back in time.
Its input is the current sweep and the 2 before it (0.2 s), each point with its time lag, so that it
can see motion; the dataset keeps 3 earlier sweeps for MSF's 4-frame head. Rendered frames are cached
in work_dirs/sim_cache (the first epoch renders, two loader workers in parallel; later runs read).

Train: python tools/train.py configs/msf/rpn_sim_cpu.py
Test:  python tools/test.py configs/msf/rpn_sim_cpu.py work_dirs/msf_rpn_sim_cpu/epoch_6.pth
"""
from mmengine.config import read_base
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop

from perception.engine.hooks import DetectionVisHook
from perception.eval.waymo import WaymoAP
from perception.models.msf.rpn import CenterPointRPN

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403
    from .._base_.sim_detection import *  # noqa: F401,F403

# geometry, defined once and passed down: 400 x 400 x 25 voxels, heads at stride 4 (0.8 m cells)
grid = dict(x_min=-40.0, y_min=-40.0, z_min=-1.0, x_max=40.0, y_max=40.0, z_max=4.0, voxel_size=(0.2, 0.2, 0.2))

model = dict(
    type=CenterPointRPN, grid=grid, classes=classes, point_fields=("x", "y", "z", "intensity", "time_lag"),
    sweeps=2, with_velocity=True,
    encoder=dict(channels=(8, 16, 32, 32), out_channels=32, blocks=1),  # BEV: 32 x 1 z level
    backbone=dict(out_channels=(32, 64), layer_nums=(2, 2), strides=(1, 2)),
    neck=dict(out_channels=(32, 32), upsample_strides=(2, 4)),
    head=dict(shared_channels=32, head_channels=32, max_detections=200, score_threshold=0.1),
    bn_momentum=0.1,  # short CPU runs: running statistics settle in tens of steps
)

# 3 earlier sweeps per frame (MSF's head pools 4 frames), renders cached on disk for loader workers and reruns;
# workers are spawned, not forked (a fork can inherit a lock held by one of the parent's threads)
sim_data = dict(sweeps=3, cache_dir="work_dirs/sim_cache")
workers = dict(num_workers=2, persistent_workers=True, multiprocessing_context="spawn")
train_dataloader = dict(train_dataloader, **workers, dataset=dict(train_dataloader["dataset"], **sim_data))  # noqa: F405
val_dataloader = dict(val_dataloader, **workers, dataset=dict(val_dataloader["dataset"], **sim_data))  # noqa: F405
test_dataloader = val_dataloader
# Waymo-style 3D AP (the synthetic world's Car is Vehicle) at IoU 0.5 for every class, and at Waymo's own
# thresholds (Vehicle 0.7) under the prefix waymo_iou70, besides centre-distance AP
xy_range = (-40.0, -40.0, 40.0, 40.0)
val_evaluator = [val_evaluator,  # noqa: F405
                 dict(type=WaymoAP, iou_thresholds={"Vehicle": 0.5, "Pedestrian": 0.5, "Cyclist": 0.5}, xy_range=xy_range),
                 dict(type=WaymoAP, xy_range=xy_range, prefix="waymo_iou70")]
test_evaluator = val_evaluator

# 6 epochs (~5 min here after the first epoch's rendering): vehicles plateau by then
max_epochs = 6
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=3)
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]

custom_hooks = [*custom_hooks, dict(type=DetectionVisHook, show_dir=None, xy_range=(-40.0, -40.0, 40.0, 40.0))]  # noqa: F405
work_dir = "work_dirs/msf_rpn_sim_cpu"
