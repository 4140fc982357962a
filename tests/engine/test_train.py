"""tools/train.py and tools/test.py end to end on a tiny synthetic setup (subprocesses, as a user runs them).

Covers: two epochs train with TensorBoard events and falling loss; a crash in the middle of writing
a checkpoint leaves a resumable one and ``--resume`` reproduces the uninterrupted loss curve to 1e-6;
a checkpoint carrying code is refused; bad keys, missing data and mismatched weights exit 2 with
one clear line; ``--show-dir`` writes pictures and ``--out`` the metrics.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/bev_center/bev_center_sim.py"
# a 40 m x 40 m grid, 4 frames of one sequence, batch 2: 2 iterations an epoch, every iteration logged exactly
TINY = ["model.grid.x_min=-20.0", "model.grid.y_min=-20.0", "model.grid.x_max=20.0", "model.grid.y_max=20.0",
        "model.width=8", "train_dataloader.dataset.seeds=[3]", "train_dataloader.dataset.frames=4",
        "val_dataloader.dataset.seeds=[1000]", "val_dataloader.dataset.frames=2", "train_cfg.val_interval=100",
        "test_dataloader.dataset.seeds=[1000]", "test_dataloader.dataset.frames=2",
        "default_hooks.logger.interval=1", "log_processor.window_size=1"]


def run_tool(tool: str, *args: str, script: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py`` (or ``python -c script`` with the same argv) from the repo root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train(work_dir: Path, epochs: int, *extra: str, **kw) -> subprocess.CompletedProcess:
    return run_tool("train", str(CONFIG), "--work-dir", str(work_dir), *extra,
                    "--cfg-options", f"train_cfg.max_epochs={epochs}", *TINY, **kw)


def losses(work_dir: Path) -> dict[int, float]:
    """``{iteration: loss}`` from every run's scalars.json under ``work_dir`` (later runs win)."""
    out = {}
    for f in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """Three epochs, uninterrupted."""
    wd = tmp_path_factory.mktemp("uninterrupted")
    train(wd, 3)
    return wd


def test_two_epochs_train_log_to_tensorboard_and_checkpoint(tmp_path):
    wd = tmp_path / "wd"
    train(wd, 2)
    assert (wd / "epoch_1.pth").is_file() and (wd / "epoch_2.pth").is_file()
    assert Path((wd / "last_checkpoint").read_text()).name == "epoch_2.pth"
    assert list(wd.glob("*/vis_data/events.out.tfevents.*")), "no TensorBoard event file"
    curve = losses(wd)
    assert sorted(curve) == [1, 2, 3, 4]
    assert curve[4] < curve[1], f"loss did not fall over 2 epochs: {curve}"
    from perception.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(wd / "epoch_2.pth")  # safe (weights_only) load of mmengine's own checkpoint
    assert ckpt["meta"]["epoch"] == 2 and ckpt["meta"]["iter"] == 4
    assert "message_hub" in ckpt and "optimizer" in ckpt


CRASH_DURING_SECOND_SAVE = """
import os, runpy, sys
import perception.engine.checkpoint as ck
real, calls = ck._write, []
def crashing_write(obj, f):
    calls.append(1)
    if len(calls) == 2:  # epoch 2's checkpoint: write half of it, then die like a killed process
        import io
        buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()
        f.write(data[: len(data) // 2]); f.flush()
        os._exit(137)
    real(obj, f)
ck._write = crashing_write
sys.argv = ["tools/train.py", *sys.argv[1:]]
runpy.run_path("tools/train.py", run_name="__main__")
"""


def test_crash_mid_save_leaves_resumable_checkpoint_and_resume_matches(tmp_path, reference_run):
    wd = tmp_path / "wd"
    crashed = train(wd, 3, script=CRASH_DURING_SECOND_SAVE, check=False)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert not (wd / "epoch_2.pth").exists(), "a half-written checkpoint took the final name"
    assert Path((wd / "last_checkpoint").read_text()).name == "epoch_1.pth"
    assert list(wd.glob(".epoch_2.pth.tmp-*")), "the crash should have hit the temporary file"
    train(wd, 3, "--resume")
    assert (wd / "epoch_3.pth").is_file()
    assert not list(wd.glob(".epoch_2.pth.tmp-*")), "the interrupted save's temporary file was not cleaned up"
    ref, got = losses(reference_run), losses(wd)
    assert sorted(ref) == list(range(1, 7)) and sorted(got) == list(range(1, 7))
    for step in range(3, 7):  # epochs 2 and 3, trained after the resume
        assert abs(got[step] - ref[step]) <= 1e-6, (step, got[step], ref[step])


class _WritesMarker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_that_runs_code_is_refused(tmp_path, reference_run):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _WritesMarker(str(marker))}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    for tool, args in (("test", [str(CONFIG), str(evil)]), ("train", [str(CONFIG), "--load-from", str(evil)])):
        proc = run_tool(tool, *args, "--work-dir", str(tmp_path / tool), "--cfg-options", *TINY, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "unsafe" in proc.stderr.lower() and "--unsafe-load" in proc.stderr
        assert not marker.exists(), "loading the checkpoint ran its code"


def test_bad_key_missing_data_and_mismatched_weights_exit_2(tmp_path, reference_run):
    proc = train(tmp_path / "a", 1, check=False, *["--cfg-options", "model.widht=4"])
    assert proc.returncode == 2 and "model.widht" in proc.stderr and "width" in proc.stderr
    assert "Traceback" not in proc.stderr
    kitti = ROOT / "configs/bev_center/bev_center_kitti.py"
    missing = run_tool("train", str(kitti), "--work-dir", str(tmp_path / "b"),
                       "--cfg-options", "train_dataloader.dataset.root=/nonexistent/kitti", check=False)
    assert missing.returncode == 2 and "/nonexistent/kitti" in missing.stderr, missing.stderr[-2000:]
    wide = run_tool("test", str(CONFIG), str(reference_run / "epoch_3.pth"), "--work-dir", str(tmp_path / "c"),
                    "--cfg-options", *TINY, "model.width=16", check=False)
    assert wide.returncode == 2 and "do not fit the model" in wide.stderr, wide.stderr[-2000:]
    assert "Traceback" not in wide.stderr


def test_test_tool_writes_metrics_and_pictures(tmp_path, reference_run):
    out, show = tmp_path / "metrics.json", tmp_path / "vis"
    run_tool("test", str(CONFIG), str(reference_run / "epoch_3.pth"), "--work-dir", str(tmp_path / "wd"),
             "--out", str(out), "--show-dir", str(show), "--cfg-options", *TINY)
    metrics = json.loads(out.read_text())
    assert "bev/mAP" in metrics and 0.0 <= metrics["bev/mAP"] <= 1.0
    pngs = sorted(show.glob("*.png"))
    assert [p.name for p in pngs] == ["sim01000_0000.png", "sim01000_0001.png"]
    from PIL import Image

    img = Image.open(pngs[0])
    assert img.size[0] > img.size[1] > 100  # two BEV panels side by side


@pytest.mark.data
def test_kitti_config_trains_on_the_real_sample_frames(tmp_path, data_root):
    kitti = ROOT / "configs/bev_center/bev_center_kitti.py"
    root = str(data_root / "kitti")
    run_tool("train", str(kitti), "--work-dir", str(tmp_path), "--cfg-options", "train_cfg.max_epochs=2",
             f"train_dataloader.dataset.root={root}", f"val_dataloader.dataset.root={root}",
             "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
             "val_dataloader.num_workers=0", "val_dataloader.persistent_workers=False", "model.width=8",
             "default_hooks.logger.interval=1", "log_processor.window_size=1")
    curve = losses(tmp_path)
    assert (tmp_path / "epoch_2.pth").is_file() and len(curve) >= 2
    assert all(v == v and v < 1e3 for v in curve.values()), curve  # finite, no blow-up on real points
