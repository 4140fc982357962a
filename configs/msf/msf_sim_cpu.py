"""MSF stage 2 on the synthetic world, CPU-sized: the frozen RPN of ``rpn_sim_cpu.py`` + the MSF head over 4 frames.

Two-stage training as in the paper: the RPN first, then the head on its proposals.

Stage 1: python tools/train.py configs/msf/rpn_sim_cpu.py
Stage 2: python tools/train.py configs/msf/msf_sim_cpu.py
Test:    python tools/test.py configs/msf/msf_sim_cpu.py work_dirs/msf_sim_cpu/epoch_12.pth
"""
from mmengine.config import read_base
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop

from perception.models.msf.msf import MSF

with read_base():
    from .rpn_sim_cpu import *  # noqa: F401,F403

model = dict(
    type=MSF, rpn=model, frames=4, rpn_checkpoint="work_dirs/msf_rpn_sim_cpu/epoch_6.pth",  # noqa: F405
    num_proposals=64, max_points=48, radius_scale=1.3, z_margin=0.5, ground_clearance=0.2,
    head=dict(dim=64, heads=4, blocks=2, group_size=1),
)

max_epochs = 12
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=6)
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
work_dir = "work_dirs/msf_sim_cpu"
