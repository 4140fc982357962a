"""``--launcher ray``: the same mmengine training, data-parallel over a Ray cluster with Ray Train.

Ray Train's ``TorchTrainer`` starts ``num_workers`` worker processes (on this machine or across a
cluster), sets torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) and initialises the
``torch.distributed`` process group (gloo on CPU, NCCL on GPU). Each worker then builds the config
exactly as ``tools/train.py --launcher pytorch`` would and runs :class:`PerceptionRunner`; mmengine
sees the existing process group and wraps the model in DDP, so gradients, sampler sharding and
optimizer steps are the same as under torchrun. Rank 0 reports the final epoch and iteration.

Connects to a running cluster when ``RAY_ADDRESS`` is set (``ray.init()`` semantics), else starts a
local one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _worker(options: dict[str, Any]) -> None:
    import ray.train

    from perception.engine.cli import build_train_config
    from perception.engine.runner import PerceptionRunner

    cfg = build_train_config(launcher="pytorch", **options)
    runner = PerceptionRunner.from_cfg(cfg)
    runner.train()
    ray.train.report({"epoch": runner.epoch, "iter": runner.iter, "world_size": runner.world_size})


def train_on_ray(options: dict[str, Any], num_workers: int = 2, use_gpu: bool | None = None) -> dict[str, Any]:
    """Train with ``build_train_config(**options)`` on ``num_workers`` Ray Train workers; rank 0's final metrics.

    ``options``: the keyword arguments of :func:`perception.engine.cli.build_train_config` except
    ``launcher`` (``config``, ``options``, ``work_dir``, ``amp``, ``resume``, ``load_from``, ``unsafe_load``).
    """
    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from perception.engine.cli import ConfigError, load_config

    if num_workers < 1:
        raise ConfigError(f"--num-workers must be >= 1, got {num_workers}")
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    # resolve the work dir here so every worker (and a resumed run) uses the same absolute path
    cfg = load_config(options["config"], options.get("options"), options.get("work_dir"))
    work_dir = Path(cfg.work_dir).resolve()
    options = {**options, "config": str(Path(options["config"]).resolve()), "work_dir": str(work_dir)}
    if not ray.is_initialized():
        local = "RAY_ADDRESS" not in os.environ
        ray.init(num_cpus=max(num_workers + 1, os.cpu_count() or 1) if local else None,
                 include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}})
    trainer = TorchTrainer(
        _worker,
        train_loop_config=options,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="ray_train", storage_path=str(work_dir / "ray")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.metrics:
        return dict(result.metrics)
    # Ray Train v2 keeps metrics only with a reported checkpoint: read the run's own last checkpoint
    from perception.engine.checkpoint import load_checkpoint

    last = work_dir / "last_checkpoint"
    if not last.is_file():
        raise RuntimeError(f"Ray training finished but wrote no checkpoint under {work_dir}")
    meta = load_checkpoint(last.read_text().strip())["meta"]
    return {"epoch": meta["epoch"], "iter": meta["iter"], "world_size": num_workers}
