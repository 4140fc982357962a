"""GaussianFusion at the paper's size on the synthetic world (for a GPU; it builds and runs on a CPU).

As the paper (NAVSIM setting): 512 Gaussians with 128-d explicit and implicit features, 4 encoder
blocks, the TransFuser LiDAR histogram at 256x256 (0.25 m over +-32 m), 20 anchors, 2 cascade
stages. Images are 256x448 (the paper's stitched front view is 256x1024 over 3 cameras); the
encoders are ResNet-style stacks of 2 basic blocks per stage (the paper: ResNet-34).

Train: python tools/train.py configs/gaussian_fusion/gaussian_fusion_sim.py
"""
from mmengine.config import read_base

with read_base():
    from .gaussian_fusion_sim_cpu import *  # noqa: F401,F403

lidar_grid = dict(x_min=-32.0, y_min=-32.0, x_max=32.0, y_max=32.0, resolution=0.25)
model = dict(model,  # noqa: F405
             lidar_grid=lidar_grid, image_size=(256, 448), num_gaussians=512, dim=128, heads=8, blocks=4,
             image_widths=(64, 128, 256), lidar_widths=(64, 128, 256), encoder_blocks=2, points=8,
             heights=(0.5, 1.0, 2.0, 3.0))
train_dataloader = dict(train_dataloader, batch_size=8)  # noqa: F405
max_epochs = 20
train_cfg = dict(train_cfg, max_epochs=max_epochs, val_interval=5)  # noqa: F405
param_scheduler = [dict(param_scheduler[0], T_max=max_epochs)]  # noqa: F405
optim_wrapper = dict(optim_wrapper, optimizer=dict(optim_wrapper["optimizer"], lr=2e-4))  # noqa: F405
work_dir = "work_dirs/gaussian_fusion_sim"
