"""PFDepth on the synthetic world's pinhole + fisheye rig, small enough to train on a CPU.

2 pinholes (CAM_L0, CAM_F0: 128x72) + 2 fisheyes (FISHEYE_FRONT Kannala-Brandt, FISHEYE_LEFT MEI:
128x128), 40 training sequences x 8 frames (every 5th of 40), 6 held-out sequences x 4 frames. A
56 m x 56 m x 6 m ego-centred volume at 1 x 1 x 0.5 m (56x56x12), 16 channels, 4,704 latent Gaussians.
The per-view monocular baseline (similar size) trains in the same run (``baseline=True``) and is
scored beside it (``depth/baseline/*``). Rendered samples are cached in work_dirs/pfdepth_cache.

Train: python tools/train.py configs/pfdepth/pfdepth_sim_cpu.py
Test:  python tools/test.py configs/pfdepth/pfdepth_sim_cpu.py work_dirs/pfdepth_sim_cpu/epoch_20.pth
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import collate_samples
from perception.eval.depth import DepthMetric
from perception.models.pfdepth.data import PFDepthSimDataset
from perception.models.pfdepth.model import PFDepth

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

# geometry, defined once and passed down (ego frame, rear axle on the ground; x forward, y left, z up)
grid = dict(x_min=-16.0, y_min=-28.0, z_min=-1.0, x_max=40.0, y_max=28.0, z_max=5.0, voxel_size=(1.0, 1.0, 0.5))
cameras = ("CAM_L0", "CAM_F0", "FISHEYE_FRONT", "FISHEYE_LEFT")
sizes = dict(pinhole=(128, 72), fisheye=(128, 128))  # (W, H) per view type
max_depth = 80.0
cache_dir = "work_dirs/pfdepth_cache"

train_set = dict(type=PFDepthSimDataset, seeds=list(range(0, 40)), cameras=cameras, sizes=sizes, frames=40, every=5,
                 cache_dir=cache_dir)
val_set = dict(type=PFDepthSimDataset, seeds=list(range(1000, 1006)), cameras=cameras, sizes=sizes, frames=40, every=10,
               cache_dir=cache_dir)

model = dict(type=PFDepth, grid=grid, cameras=cameras, sizes=sizes, widths=(32, 48, 64), dim=48, volume_dim=16,
             bins=32, depth_range=(0.5, max_depth), gaussian_stride=(2, 2, 2), gaussian_dim=8, samples=48,
             ray_range=(0.3, 60.0), max_depth=max_depth, baseline=True, baseline_head_layers=3)

train_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_samples), dataset=train_set)
val_dataloader = dict(batch_size=4, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_samples), dataset=val_set)
test_dataloader = val_dataloader
val_evaluator = dict(type=DepthMetric, max_depth=max_depth)
test_evaluator = val_evaluator

max_epochs = 20  # 80 steps of 4 frames per epoch; about 20 minutes on this machine's 2 cores
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1.5e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
work_dir = "work_dirs/pfdepth_sim_cpu"
