"""calibformer_flow_sub_sim_cpu.py on rigs whose camera mounts vary: calibration that has to come from the image.

On the fixed navsim rig the LiDAR image alone gives five of the six parameters away: the scan's rings lie on the
ground around the LiDAR, so where they fall tells the LiDAR's pitch, roll and position relative to a camera that
is always mounted the same way; only yaw (rotation about the vertical, which maps the rings onto themselves) needs
the camera. A network trained there learns that rig, not calibration (tools/calib_control.py: its translation is
as good with another frame's image). Here every sequence's cameras are mounted off the rig by up to +-10 deg /
+-0.25 m per axis (``mount_jitter``, training and held-out sequences alike), so the true extrinsic is as uncertain
as the perturbation and only matching the image to the LiDAR beats it.

Train: python tools/train.py configs/calibformer/calibformer_flow_jitter_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_flow_jitter_sim_cpu.py work_dirs/calibformer_flow_jitter_sim_cpu/epoch_40.pth
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_flow_sub_sim_cpu import *  # noqa: F401,F403

mount_jitter = (10.0, 0.25)
train_dataloader["dataset"].update(mount_jitter=mount_jitter)  # noqa: F405
val_dataloader["dataset"].update(mount_jitter=mount_jitter)  # noqa: F405
test_dataloader = val_dataloader  # noqa: F405
work_dir = "work_dirs/calibformer_flow_jitter_sim_cpu"
