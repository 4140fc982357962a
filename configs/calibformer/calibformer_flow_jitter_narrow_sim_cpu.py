"""calibformer_flow_jitter_sim_cpu.py (jittered camera mounts, sub-pixel and intensity channels) with the fixed-rig
network's narrow ranges (+-4 deg / +-0.1 m and +-1.5 deg / +-0.04 m): the schedule under which calibformer_flow_sim_cpu
learned yaw on the fixed rig, now where every parameter has to come from the image. The released calibration network
(tools/calibrate.py, the pipeline's extrinsic-health check): held-out jittered rigs 9.99 -> 1.93 deg (6.71 deg with
another frame's image, tools/calib_control.py), translation 24.1 -> 23.9 cm; 40 epochs in 36.6 minutes.

Train: python tools/train.py configs/calibformer/calibformer_flow_jitter_narrow_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_flow_jitter_narrow_sim_cpu.py work_dirs/calibformer_flow_jitter_narrow_sim_cpu/epoch_40.pth
Publish: python tools/publish_model.py work_dirs/calibformer_flow_jitter_narrow_sim_cpu/epoch_40.pth checkpoints --name calibformer_flow_jitter_narrow_sim_cpu
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_flow_jitter_sim_cpu import *  # noqa: F401,F403

train_dataloader["dataset"].update(ranges=[eval_range, eval_range, (4.0, 0.1), (1.5, 0.04)])  # noqa: F405
work_dir = "work_dirs/calibformer_flow_jitter_narrow_sim_cpu"
