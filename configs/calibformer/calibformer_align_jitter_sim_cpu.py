"""The released jittered-rig network (calibformer_flow_jitter_narrow_sim_cpu.py, frozen) followed by learned
appearance alignment (align.py): an image-to-LiDAR-appearance U-Net trained on the true projections of the same
training pairs, and an L-BFGS alignment of the points to its maps at full resolution. Recorded: 5 epochs in 6.9
minutes (43.5 with the network's 36.6); held-out jittered rigs 9.99 deg / 24.1 cm -> 1.16 deg / 17.4 cm (the
network alone: 1.93 deg / 23.9 cm); with another frame's image 6.51 deg / 25.4 cm (tools/calib_control.py).

Train: python tools/train.py configs/calibformer/calibformer_align_jitter_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_align_jitter_sim_cpu.py work_dirs/calibformer_align_jitter_sim_cpu/epoch_5.pth
Publish: python tools/publish_model.py work_dirs/calibformer_align_jitter_sim_cpu/epoch_5.pth checkpoints --name calibformer_align_jitter_sim_cpu
"""
from mmengine.config import read_base
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR
from mmengine.runner import EpochBasedTrainLoop
from torch.optim import AdamW

from perception.models.calibformer.align import CalibAligned

with read_base():
    from .calibformer_flow_jitter_narrow_sim_cpu import *  # noqa: F401,F403

model = dict(type=CalibAligned, network=dict(model),  # noqa: F405
             init_from="checkpoints/calibformer_flow_jitter_narrow_sim_cpu.safetensors",
             sigmas=(3.0, 1.5, 0.75), iters=30, max_deg=3.0, max_m=0.15)  # the alignment: blur levels (px), L-BFGS
# iterations per level, bound per axis of the update
max_epochs = 5  # 135 steps of 16 pairs each
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [dict(type=LinearLR, start_factor=0.1, by_epoch=False, begin=0, end=50),
                   dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
work_dir = "work_dirs/calibformer_align_jitter_sim_cpu"
