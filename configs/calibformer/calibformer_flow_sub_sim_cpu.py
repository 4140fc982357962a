"""calibformer_flow_int_sim_cpu.py with the sub-pixel channels: where in its pixel each LiDAR pixel's point falls.

At 160x96 a 5 cm offset moves a point 10 m away by about half a pixel; the LiDAR image rounds every point to
its pixel, so the network saw such shifts only in which pixels the points round to. ``subpixel=True`` adds the
nearest point's ``u - round(u)``, ``v - round(v)`` as two more channels of the LiDAR image (geometry.depth_image).
Otherwise the same recipe: 40 epochs, the displacement head, intensity, the narrow ranges at the full +-0.25 m.

Train: python tools/train.py configs/calibformer/calibformer_flow_sub_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_flow_sub_sim_cpu.py work_dirs/calibformer_flow_sub_sim_cpu/epoch_40.pth
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_flow_int_sim_cpu import *  # noqa: F401,F403

model.update(subpixel=True)  # noqa: F405
work_dir = "work_dirs/calibformer_flow_sub_sim_cpu"
