"""The two-stage CalibFormer cascade with a LiDAR-intensity second stage: stage 2's training.

As calibformer_cascade_sim_cpu.py (stage 1 the released depth-only network, frozen; stage 2 started from its
weights and fine-tuned for 6 epochs at lr 1e-3 on +-1.5 deg with the full +-0.25 m), but stage 2's LiDAR image has
a third channel, the intensity of the nearest point (lane markings, kerbs, the road's edge: ground texture the
camera sees too, where the depth of a flat road is the same wherever the LiDAR sits). The new channel's first
weights start at zero, so stage 2 starts as the released network.

Train: python tools/train.py configs/calibformer/calibformer_cascade_int_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_cascade_int_sim_cpu.py work_dirs/calibformer_cascade_int_sim_cpu/epoch_6.pth
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_cascade_sim_cpu import *  # noqa: F401,F403

model["stages"] = [stage, dict(stage, intensity=True)]  # noqa: F405
train_dataloader["dataset"].update(intensity=True)  # noqa: F405
val_dataloader["dataset"].update(intensity=True)  # noqa: F405
test_dataloader = val_dataloader  # noqa: F405
work_dir = "work_dirs/calibformer_cascade_int_sim_cpu"
