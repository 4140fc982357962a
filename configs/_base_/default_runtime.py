"""Runtime shared by every config: hooks, logging (text, JSON, TensorBoard), seeding, environment."""
from mmengine.hooks import IterTimerHook, LoggerHook, ParamSchedulerHook, DistSamplerSeedHook
from mmengine.runner import LogProcessor
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer

from perception.engine.hooks import ProgressBarHook
from perception.engine.runner import AtomicCheckpointHook

default_scope = None
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=AtomicCheckpointHook, interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
custom_hooks = [dict(type=ProgressBarHook)]
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
log_processor = dict(type=LogProcessor, window_size=10, by_epoch=True)
visualizer = dict(type=Visualizer, name="visualizer",
                  vis_backends=[dict(type=LocalVisBackend), dict(type=TensorboardVisBackend)])
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
unsafe_load = False  # True lets checkpoints run pickled code on load: only for files from an author you trust
