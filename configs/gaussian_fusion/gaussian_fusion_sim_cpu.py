"""GaussianFusion + cascade planning head on the synthetic world, small enough to train on a CPU.

NAVSIM-style samples from 24 training sequences (30 frames each, 3 front cameras, LiDAR, ego status,
driving command, the 4 s future), scored with the PDM score on 16 held-out sequences against
NAVSIM's constant-velocity and ego-status-MLP baselines in the same run. Smaller than the paper
(gaussian_fusion_sim.py): 256 Gaussians of 64 channels, 2 encoder blocks, 96x160 images, a 128x128
LiDAR histogram at 0.5 m. Rendered frames and planning scenes are cached in work_dirs/sim_cache.

Train: python tools/train.py configs/gaussian_fusion/gaussian_fusion_sim_cpu.py
Test:  python tools/test.py configs/gaussian_fusion/gaussian_fusion_sim_cpu.py work_dirs/gaussian_fusion_sim_cpu/epoch_24.pth
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import SimDataset, collate_samples
from perception.eval.pdms_metric import PDMScore
from perception.models.gaussian_fusion.model import GaussianFusion

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

# geometry, defined once and passed down (ego frame, rear axle; x forward, y left)
lidar_grid = dict(x_min=-32.0, y_min=-32.0, x_max=32.0, y_max=32.0, resolution=0.5)  # TransFuser's +-32 m
map_grid = dict(x_min=-32.0, y_min=-32.0, x_max=32.0, y_max=32.0, resolution=0.5)
cache_dir = "work_dirs/sim_cache"

# no in-memory cache: the on-disk one serves the loader workers (a frame with 3 cameras is ~8 MB)
sim = dict(type=SimDataset, frames=30, lidar="hdl64", render_cameras=True, rigs=("navsim",), cache=False,
           cache_dir=cache_dir, drop_sensors=())  # drop_sensors: e.g. ["LIDAR_TOP"] to test without it
train_set = dict(sim, seeds=list(range(0, 24)))
val_set = dict(sim, seeds=list(range(1000, 1016)), planning_scenes=True)

model = dict(
    type=GaussianFusion, lidar_grid=lidar_grid, map_grid=map_grid, image_size=(96, 160),
    num_gaussians=256, dim=64, heads=4, blocks=2, image_widths=(16, 32, 64), lidar_widths=(16, 32, 64),
    points=4, heights=(0.5, 1.5, 3.0), num_anchors=20, stages=2, knn=16, sensor_dropout=0.1,
    anchors=dict(dataset=train_set, k=20, cache_dir=cache_dir),  # k-means over the training futures
    accel_limits=(-4.0, 1.5), jerk_limit=2.0,  # the chosen plan re-timed within these (None: raw regression)
)

workers = dict(num_workers=1, persistent_workers=True, multiprocessing_context="spawn")
train_dataloader = dict(batch_size=4, **workers, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_samples), dataset=train_set)
val_dataloader = dict(batch_size=4, **workers, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_samples), dataset=val_set)
test_dataloader = val_dataloader
val_evaluator = dict(type=PDMScore, baseline_train=train_set, cache_dir=cache_dir)
test_evaluator = val_evaluator

max_epochs = 24  # about 20 minutes on this machine's 2 cores
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-3, weight_decay=1e-2),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
work_dir = "work_dirs/gaussian_fusion_sim_cpu"
