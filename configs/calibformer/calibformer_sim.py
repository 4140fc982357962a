"""CalibFormer at the paper's scale on the synthetic world (builds and runs here; not trained on this machine).

The paper (Xiao et al., ICRA 2024) feeds KITTI frames at full resolution through deeper extractors
aggregated at 1/4 and a wider transformer. Here: 640x384 images (the synthetic pinholes' native 640x360,
padded by scaling to a multiple of 16), 4-stage extractors of 32-128 channels aggregated to 96 at 1/4,
8 correlation heads with window 4, a 256-d transformer with 4 encoder and 4 decoder layers.
Everything else (data, perturbations, losses, evaluation) is the CPU config's.

Train: python tools/train.py configs/calibformer/calibformer_sim.py   (a GPU machine)
"""
from mmengine.config import read_base

with read_base():
    from .calibformer_sim_cpu import *  # noqa: F401,F403

image_size = (640, 384)
train_dataloader.update(batch_size=8, dataset=dict(train_set, size=image_size, max_points=60000))  # noqa: F405
val_dataloader.update(batch_size=8, dataset=dict(val_set, size=image_size, max_points=60000))  # noqa: F405
test_dataloader = val_dataloader  # noqa: F405
model.update(widths=(32, 64, 96, 128), feat_dim=96, dim=256, heads=8, corr_heads=8, enc_layers=4, dec_layers=4)  # noqa: F405
max_epochs = 120
train_cfg.update(max_epochs=max_epochs, val_interval=10)  # noqa: F405
param_scheduler[1].update(T_max=max_epochs)  # noqa: F405
work_dir = "work_dirs/calibformer_sim"
