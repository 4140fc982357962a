"""CalibFormer on the synthetic world, small enough to train on a CPU in under 30 minutes.

Camera-LiDAR pairs from 24 training sequences (30 frames x the navsim rig's 3 pinholes = 2,160 pairs) at
160x96, miscalibrated on the fly (a mix of +-10 deg / +-0.25 m and narrower ranges, so one network
serves the first step and the refinement steps); evaluated on 4 held-out sequences (120 pairs) at
+-10 deg / +-0.25 m with fixed perturbations, 3 refinement iterations. Smaller than the paper
(calibformer_sim.py): 1/4-resolution features of 48 channels, a 64-d transformer (2 + 2 layers).
The rendered frames are GaussianFusion's (work_dirs/sim_cache, reused when present); the compact
pairs are cached in work_dirs/calib_cache.

Train: python tools/train.py configs/calibformer/calibformer_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_sim_cpu.py work_dirs/calibformer_sim_cpu/epoch_40.pth
"""
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.eval.calibration import CalibrationMetric
from perception.models.calibformer.data import CalibSimDataset, collate_calib
from perception.models.calibformer.model import CalibFormer

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403

image_size = (160, 96)  # (W, H), the model's input
eval_range = (10.0, 0.25)  # +-deg, +-m per axis (CalibFormer's and LCCNet's default)
pairs = dict(type=CalibSimDataset, frames=30, sim_frames=30, cameras=("CAM_L0", "CAM_F0", "CAM_R0"), size=image_size,
             max_points=20000, cache_dir="work_dirs/calib_cache", sim_cache_dir="work_dirs/sim_cache",
             deskew=False)  # the sweeps as measured: every figure of the configs built on this one was recorded so
# (calibformer_align_deskew_sim_cpu.py deskews them to the camera's exposure)
train_set = dict(pairs, seeds=list(range(0, 24)), ranges=[eval_range, eval_range, (4.0, 0.1), (1.5, 0.04)])
val_set = dict(pairs, seeds=list(range(1000, 1004)), frames=10, ranges=[eval_range], fixed_seed=0)

model = dict(type=CalibFormer, widths=(16, 32, 48, 64), feat_dim=48, dim=64, heads=4, corr_heads=4, window=4,
             enc_layers=2, dec_layers=2, t_scale=0.1, iterations=3, max_depth=80.0, ref_depth=2.0, w_rot=30.0, w_trans=20.0, w_pc=2.0)

train_dataloader = dict(batch_size=16, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_calib), dataset=train_set)
val_dataloader = dict(batch_size=16, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_calib), dataset=val_set)
test_dataloader = val_dataloader
val_evaluator = dict(type=CalibrationMetric)
test_evaluator = val_evaluator

max_epochs = 40  # 135 steps of 16 pairs each; about 27 minutes on this machine's 2 cores
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [dict(type=LinearLR, start_factor=0.1, by_epoch=False, begin=0, end=100),
                   dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
work_dir = "work_dirs/calibformer_sim_cpu"
