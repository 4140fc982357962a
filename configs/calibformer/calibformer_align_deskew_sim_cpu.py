"""calibformer_align_jitter_sim_cpu.py on sweeps deskewed to the cameras' exposure (``deskew=True``): the same frozen
network, the appearance maps trained on, and the held-out pairs drawn from, points moved to the image's time by the
car's odometry (perception.geometry.motion.deskew_by_odometry). As measured, the front of a sweep is 50 ms older than
the image, 40 cm along the road at 8 m/s, so the true extrinsic did not put the points where the image sees them.
Recorded: 5 epochs in 7.6 minutes (44.2 with the network's 36.6); held-out jittered rigs (deskewed) 9.99 deg / 24.1 cm
-> 1.01 deg / 16.3 cm per frame (6.47 deg / 25.4 cm with another frame's image); over 10-frame sequences
(tools/calib_sequence.py, 12 rigs x 3 draws) 0.37 deg / 11.7 cm.

Train: python tools/train.py configs/calibformer/calibformer_align_deskew_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_align_deskew_sim_cpu.py work_dirs/calibformer_align_deskew_sim_cpu/epoch_5.pth
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_align_jitter_sim_cpu import *  # noqa: F401,F403

train_dataloader["dataset"].update(deskew=True)  # noqa: F405
val_dataloader["dataset"].update(deskew=True)  # noqa: F405
test_dataloader = val_dataloader  # noqa: F405
work_dir = "work_dirs/calibformer_align_deskew_sim_cpu"
