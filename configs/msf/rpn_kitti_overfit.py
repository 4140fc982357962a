"""MSF's RPN overfitting the 6 real KITTI frames: the data path from real files to KITTI metrics, end to end.

Reads the Velodyne scans and label_2 files through the KITTI reader (camera boxes → LiDAR boxes), trains
the CenterPoint RPN on all 6 frames and scores it on the same frames with the KITTI evaluator (mmdet3d's
``kitti_eval``). KITTI object frames are single sweeps: no history, no velocity, so this is MSF's stage 1
only (the MSF head needs a trained RPN's velocities and earlier sweeps to pool from).

Train: python tools/train.py configs/msf/rpn_kitti_overfit.py
Test:  python tools/test.py configs/msf/rpn_kitti_overfit.py work_dirs/msf_rpn_kitti_overfit/epoch_60.pth

Metrics: ``kitti/Car_3D_AP40_moderate`` is KITTI's headline (3D AP, R40, IoU 0.7), in percent. With
fewer than 41 ground-truth boxes R40 cannot exceed (n - 1) / 40 (these frames have 3 moderate Cars:
5.0 is perfect), so ``kitti_x41/...`` scores the same frames with each counted 41 times (the same
precision-recall curve, sampled without that cap: 100 is perfect); ``waymo/Car/AP_L1`` is the 3D AP at
IoU 0.7 under Waymo's interpolation, in [0, 1], as a cross-check.
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import ReaderDataset, collate_samples
from perception.eval.kitti import KittiAP
from perception.eval.waymo import WaymoAP
from perception.models.msf.rpn import CenterPointRPN

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

data_root = "../shared/data/kitti"
classes = ("Car", "Pedestrian", "Cyclist")
# geometry, defined once and passed down: KITTI's front view in the Velodyne frame (it sits 1.73 m above the
# road), 352 x 400 x 20 voxels of 0.2 m; heads at stride 4 (0.8 m cells, 88 x 100)
grid = dict(x_min=0.0, y_min=-40.0, z_min=-3.0, x_max=70.4, y_max=40.0, z_max=1.0, voxel_size=(0.2, 0.2, 0.2))

model = dict(
    type=CenterPointRPN, grid=grid, classes=classes, point_fields=("x", "y", "z", "intensity"),
    sweeps=0, with_velocity=False,  # KITTI object frames: one sweep, no velocity labels
    encoder=dict(channels=(8, 16, 32, 32), out_channels=32, blocks=1),  # BEV: 32 x 1 z level
    backbone=dict(out_channels=(32, 64), layer_nums=(2, 2), strides=(1, 2)),
    neck=dict(out_channels=(32, 32), upsample_strides=(2, 4)),
    head=dict(shared_channels=32, head_channels=32, max_detections=100, score_threshold=0.1),
    bn_momentum=0.1,
)

# all 6 frames (every ImageSets list of the sample data names all of them), one batch: no augmentation
kitti = dict(type=ReaderDataset, source="kitti", root=data_root, split="train", classes=classes, load_images=False)
train_dataloader = dict(batch_size=6, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_samples), dataset=kitti)
val_dataloader = dict(batch_size=6, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_samples), dataset=kitti)
test_dataloader = val_dataloader
val_evaluator = [dict(type=KittiAP, classes=classes),
                 dict(type=KittiAP, classes=classes, repeat=41, prefix="kitti_x41"),
                 dict(type=WaymoAP, classes=("Car",), class_map={"Car": ("Car",)}, iou_thresholds={"Car": 0.7},
                      xy_range=(0.0, -40.0, 70.4, 40.0))]
test_evaluator = val_evaluator

max_epochs = 60  # one step per epoch
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=3e-3, weight_decay=1e-4), clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
default_hooks = dict(default_hooks, logger=dict(default_hooks["logger"], interval=1),  # noqa: F405
                     checkpoint=dict(default_hooks["checkpoint"], interval=20, max_keep_ckpts=1))  # noqa: F405
log_processor = dict(log_processor, window_size=1)  # noqa: F405
work_dir = "work_dirs/msf_rpn_kitti_overfit"
