"""PFDepth at a paper-like size on the synthetic world's full pinhole + fisheye rig (built and run here, not trained).

All 3 NAVSIM-like pinholes at 448x256 and the 4 surround fisheyes at 384x384, a 100 m x 100 m x 8 m
volume at 0.5 m (200x200x16), 64 channels, 2 x 2 x 2 voxels per latent Gaussian (80,000),
96 ray samples. Everything else is the CPU config's (configs/pfdepth/pfdepth_sim_cpu.py).
"""
from mmengine.config import read_base

with read_base():
    from .pfdepth_sim_cpu import *  # noqa: F401,F403

grid = dict(x_min=-50.0, y_min=-50.0, z_min=-2.0, x_max=50.0, y_max=50.0, z_max=6.0, voxel_size=0.5)
cameras = ("CAM_L0", "CAM_F0", "CAM_R0", "FISHEYE_FRONT", "FISHEYE_LEFT", "FISHEYE_REAR", "FISHEYE_RIGHT")
sizes = dict(pinhole=(448, 256), fisheye=(384, 384))
train_dataloader.update(batch_size=1, dataset=dict(train_set, cameras=cameras, sizes=sizes))  # noqa: F405
val_dataloader.update(batch_size=1, dataset=dict(val_set, cameras=cameras, sizes=sizes))  # noqa: F405
test_dataloader = val_dataloader  # noqa: F405
model.update(grid=grid, cameras=cameras, sizes=sizes, widths=(64, 128, 256), dim=128, volume_dim=64,  # noqa: F405
             bins=64, gaussian_stride=(2, 2, 2), gaussian_dim=32, samples=96, ray_range=(0.3, 80.0))
work_dir = "work_dirs/pfdepth_sim"
