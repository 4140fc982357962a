"""Detection on the synthetic world: 16 training sequences, 2 held-out ones, centre-distance AP, 12 epochs.

Shared by the sim detection configs (BevCenterNet, the MSF RPN); the model and its geometry stay in
each config.
"""
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler import CosineAnnealingLR
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

from perception.data.dataset import SimDataset, collate_samples
from perception.eval.detection import CentreDistanceAP

classes = ("Car", "Pedestrian", "Cyclist")
train_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=collate_samples),
                        dataset=dict(type=SimDataset, seeds=list(range(0, 16)), frames=10, lidar="hdl64"))
val_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
                      collate_fn=dict(type=collate_samples),
                      dataset=dict(type=SimDataset, seeds=[1000, 1001], frames=10, lidar="hdl64"))
test_dataloader = val_dataloader
val_evaluator = dict(type=CentreDistanceAP, classes=classes, max_distance=40.0)
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-3, weight_decay=1e-2), clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type=CosineAnnealingLR, T_max=max_epochs, by_epoch=True, eta_min=1e-5)]
