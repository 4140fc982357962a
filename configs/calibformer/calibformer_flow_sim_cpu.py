"""CalibFormer with the displacement head (model.py, item 6), otherwise calibformer_sim_cpu.py: the released model.

The same data, schedule and network, plus a per-1/4-cell displacement head trained on the true displacement of
the sweep's points (Laplace NLL, w_flow 0.5): a dense training signal for the correlation features, which is what
taught the network yaw. At test the decoder's pose is used as it is (pnp="none": measured best; "rotation" and
"full" solve for the pose from the displacements instead, see the README). 40 epochs, 39.5 minutes on this
machine's 2 cores.

Train: python tools/train.py configs/calibformer/calibformer_flow_sim_cpu.py
Test:  python tools/test.py configs/calibformer/calibformer_flow_sim_cpu.py work_dirs/calibformer_flow_sim_cpu/epoch_40.pth
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_sim_cpu import *  # noqa: F401,F403

model.update(flow=True, w_flow=0.5, pnp="none")  # noqa: F405
work_dir = "work_dirs/calibformer_flow_sim_cpu"
