"""Distributed training on this machine: torch DDP (torchrun, gloo) and Ray Train, 2 workers each.

Both shard the same 8 frames over 2 ranks (batch 2): 2 optimizer steps an epoch, 4 in 2 epochs, and
the same loss curve, since the data order, the seed and the gradient all-reduce are the same.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.test_train import CONFIG, ROOT, losses

SMALL = ["train_cfg.max_epochs=2", "model.grid.x_min=-20.0", "model.grid.y_min=-20.0", "model.grid.x_max=20.0",
         "model.grid.y_max=20.0", "model.width=8", "train_dataloader.dataset.seeds=[3]",
         "train_dataloader.dataset.frames=8", "val_dataloader.dataset.seeds=[1000]", "val_dataloader.dataset.frames=2",
         "default_hooks.logger.interval=1", "log_processor.window_size=1"]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd[:4]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _final_iter(work_dir: Path) -> int:
    from perception.engine.checkpoint import load_checkpoint

    return load_checkpoint((work_dir / "last_checkpoint").read_text().strip())["meta"]["iter"]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
def test_ray_launcher_takes_the_same_steps_as_ddp(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    ddp, ray = tmp_path / "ddp", tmp_path / "ray"
    _run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(ROOT / "tools/train.py"), str(CONFIG),
          "--launcher", "pytorch", "--work-dir", str(ddp), "--cfg-options", *SMALL])
    _run([sys.executable, str(ROOT / "tools/train.py"), str(CONFIG), "--launcher", "ray", "--num-workers", "2",
          "--work-dir", str(ray), "--cfg-options", *SMALL])
    assert _final_iter(ddp) == _final_iter(ray) == 4
    ddp_curve, ray_curve = losses(ddp), losses(ray)
    assert sorted(ddp_curve) == sorted(ray_curve) == [1, 2, 3, 4]
    for step in ddp_curve:
        assert abs(ddp_curve[step] - ray_curve[step]) < 1e-5, (step, ddp_curve[step], ray_curve[step])
