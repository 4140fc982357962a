"""The two-stage CalibFormer cascade with a sub-pixel, intensity second stage: stage 2's training.

As calibformer_cascade_sim_cpu.py (stage 1 the released network, frozen, 39.5 minutes; stage 2 started from its
weights and fine-tuned for 6 epochs at lr 1e-3 on +-1.5 deg / +-0.25 m and +-1 deg / +-0.1 m), but stage 2's LiDAR
image has three more channels: the nearest point's intensity and where in its pixel it falls (model.py,
``intensity=True, subpixel=True``). Their first weights start at zero, so stage 2 starts as the released network.

Train: python tools/train.py configs/calibformer/calibformer_cascade_sub_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_cascade_sub_sim_cpu.py work_dirs/calibformer_cascade_sub_sim_cpu/epoch_6.pth
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_cascade_sim_cpu import *  # noqa: F401,F403

model["stages"] = [stage, dict(stage, intensity=True, subpixel=True)]  # noqa: F405
train_dataloader["dataset"].update(intensity=True)  # noqa: F405
val_dataloader["dataset"].update(intensity=True)  # noqa: F405
test_dataloader = val_dataloader  # noqa: F405
work_dir = "work_dirs/calibformer_cascade_sub_sim_cpu"
