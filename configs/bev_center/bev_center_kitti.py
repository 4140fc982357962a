"""BevCenterNet on KITTI (LiDAR only, the Velodyne frame, the front 70 m x 80 m).

python tools/train.py configs/bev_center/bev_center_kitti.py \
    --cfg-options train_dataloader.dataset.root=/data/kitti val_dataloader.dataset.root=/data/kitti
(the README's "Data sources" gives the layout; ImageSets/{train,val}.txt pick the frames; the
default root is the sample data beside the repository).
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import ReaderDataset, collate_samples
from perception.engine.hooks import DetectionVisHook
from perception.eval.detection import CentreDistanceAP
from perception.models.bev_center import BevCenterNet

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

data_root = "../shared/data/kitti"
grid = dict(x_min=0.0, y_min=-40.0, x_max=70.0, y_max=40.0, resolution=0.5)  # BevGrid, in the Velodyne frame
z_range = (-3.0, 1.0)  # the Velodyne sits 1.73 m above the road
classes = ("Car", "Pedestrian", "Cyclist")

model = dict(type=BevCenterNet, grid=grid, z_range=z_range, classes=classes, width=32)
train_dataloader = dict(batch_size=2, num_workers=2, persistent_workers=True,
                        sampler=dict(type=DefaultSampler, shuffle=True), collate_fn=dict(type=collate_samples),
                        dataset=dict(type=ReaderDataset, source="kitti", root=data_root, split="train",
                                     classes=classes, load_images=False))
val_dataloader = dict(batch_size=2, num_workers=2, persistent_workers=True,
                      sampler=dict(type=DefaultSampler, shuffle=False), collate_fn=dict(type=collate_samples),
                      dataset=dict(type=ReaderDataset, source="kitti", root=data_root, split="val",
                                   classes=classes, load_images=False))
test_dataloader = val_dataloader
val_evaluator = dict(type=CentreDistanceAP, classes=classes, max_distance=70.0)
test_evaluator = val_evaluator

max_epochs = 40
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-3, weight_decay=1e-2), clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
custom_hooks = [*custom_hooks, dict(type=DetectionVisHook, xy_range=(0.0, -40.0, 70.0, 40.0))]  # noqa: F405
work_dir = "work_dirs/bev_center_kitti"
