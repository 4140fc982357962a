"""MSF stage 1, CenterPoint RPN on the synthetic world, small enough to train on a CPU.

Voxel CenterPoint (0.2 m voxels over +-40 m) with velocity: the proposals MSF propagates back in time.

Train: python tools/train.py configs/msf/rpn_sim_cpu.py
Test:  python tools/test.py configs/msf/rpn_sim_cpu.py work_dirs/msf_rpn_sim_cpu/epoch_12.pth
"""
from mmengine.config import read_base

from perception.engine.hooks import DetectionVisHook
from perception.models.msf.rpn import CenterPointRPN

with read_base():
    from .._base_.default_runtime import *  # noqa: F401,F403
    from .._base_.sim_detection import *  # noqa: F401,F403

# geometry, defined once and passed down: 400 x 400 x 25 voxels, heads at stride 4 (0.8 m cells)
grid = dict(x_min=-40.0, y_min=-40.0, z_min=-1.0, x_max=40.0, y_max=40.0, z_max=4.0, voxel_size=(0.2, 0.2, 0.2))

model = dict(
    type=CenterPointRPN, grid=grid, classes=classes, point_fields=("x", "y", "z", "intensity"), with_velocity=True,
    encoder=dict(channels=(8, 16, 32, 32), out_channels=32, blocks=1),  # BEV: 32 x 1 z level
    backbone=dict(out_channels=(32, 64), layer_nums=(2, 2), strides=(1, 2)),
    neck=dict(out_channels=(32, 32), upsample_strides=(2, 4)),
    head=dict(shared_channels=32, head_channels=32, max_detections=200, score_threshold=0.1),
    bn_momentum=0.1,  # short CPU runs: running statistics settle in tens of steps
)


custom_hooks = [*custom_hooks, dict(type=DetectionVisHook, show_dir=None, xy_range=(-40.0, -40.0, 40.0, 40.0))]  # noqa: F405
work_dir = "work_dirs/msf_rpn_sim_cpu"
