"""MSF at the paper's sizes (a GPU config): the RPN of ``rpn_sim.py`` + the MSF head over 4 frames.

He et al., CVPR 2023: 128 points per proposal per frame, three learning blocks, BiFA between frame
groups; here 4 frames in groups of 1, 128 proposals after NMS, 128-wide features with 8 heads.

Stage 1: python tools/train.py configs/msf/rpn_sim.py
Stage 2: python tools/train.py configs/msf/msf_sim.py
"""
from mmengine.config import read_base

from perception.models.msf.msf import MSF

with read_base():
    from .rpn_sim import *  # noqa: F401,F403

model = dict(
    type=MSF, rpn=model, frames=4, rpn_checkpoint="work_dirs/msf_rpn_sim/epoch_20.pth",  # noqa: F405
    num_proposals=128, max_points=128, radius_scale=1.3, z_margin=0.5, ground_clearance=0.2,
    head=dict(dim=128, heads=8, blocks=3, group_size=1),
)
work_dir = "work_dirs/msf_sim"
