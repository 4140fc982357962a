"""Fixtures the pipeline tests share: a local Ray and an untrained BevCenterNet checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[2] / "configs/bev_center/bev_center_sim.py"


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """BevCenterNet (``CONFIG``) at its seeded initialisation, saved as a checkpoint."""
    from mmengine.config import Config

    from perception.engine.checkpoint import atomic_save
    from perception.pipeline.model_stage import build_model

    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(CONFIG)).model)
    path = tmp_path_factory.mktemp("model") / "init.pth"
    atomic_save({"state_dict": model.state_dict()}, path)
    return path
