"""Checkpoints: atomic saves survive crashes, safe loads refuse code, published weights are hashed."""
from __future__ import annotations

import builtins
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.optim.scheduler import LinearLR, MultiStepLR
from torch import nn

from perception.engine import checkpoint as ckpt_mod
from perception.engine.checkpoint import (CheckpointError, UnsafeCheckpointError, atomic_save, atomic_write_text,
                                          export_safetensors, load_checkpoint, state_dict_shape_mismatches,
                                          verify_manifest)

REPO = Path(__file__).resolve().parents[2]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _mmengine_checkpoint() -> dict:
    """What mmengine 0.10.7's ``Runner.save_checkpoint`` writes, built from the same mmengine objects."""
    model = _model()
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedulers = [LinearLR(optim, start_factor=0.1, by_epoch=False, begin=0, end=2),
                  MultiStepLR(optim, milestones=[1, 2], by_epoch=True)]
    model(torch.randn(2, 3, 3, 3)).sum().backward()
    optim.step()
    hub = MessageHub.get_instance(f"ckpt-test-{uuid.uuid4().hex}")
    for i in range(3):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
        hub.update_scalar("train/lr", np.float64(0.1))
    hub.update_scalar("val/mAP", np.float32(0.5))
    dataset_meta = {"classes": ("car", "pedestrian"), "palette": np.array([[255, 0, 0], [0, 255, 0]], np.uint8)}
    hub.update_info("dataset_meta", dataset_meta)
    hub.update_info("best_score", np.float64(0.75))
    meta = {"epoch": 3, "iter": 120, "cfg": "model = dict(type='BEVCenter')\n", "seed": np.int64(7),
            "experiment_name": "bev_20260101", "time": "20260101_000000", "mmengine_version": "0.10.7",
            "dataset_meta": dataset_meta, "val_mAP": np.float64(0.5)}
    return {"meta": meta, "state_dict": OrderedDict(model.state_dict()), "message_hub": hub.state_dict(),
            "optimizer": optim.state_dict(), "param_schedulers": [s.state_dict() for s in schedulers]}


def _assert_same(a, b, where="ckpt"):
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, HistoryBuffer):
        assert a.max_length == b.max_length, where
        np.testing.assert_array_equal(a._log_history, b._log_history)
        np.testing.assert_array_equal(a._count_history, b._count_history)
        assert a.mean() == b.mean(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_mmengine_checkpoint_round_trips_in_safe_mode(tmp_path):
    original = _mmengine_checkpoint()
    assert any(isinstance(v, HistoryBuffer) for v in original["message_hub"]["log_scalars"].values())
    path = atomic_save(original, tmp_path / "epoch_3.pth")
    loaded = load_checkpoint(path)  # trust=False
    _assert_same(original, loaded)
    assert loaded["message_hub"]["log_scalars"]["train/loss"].statistics("mean") == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_3.pth"]  # no temp file left


def test_checkpoint_written_by_a_real_runner_loads_safely(tmp_path):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, inputs, labels=None, mode="tensor"):
            out = self.lin(inputs).squeeze(-1)
            return {"loss": ((out - labels) ** 2).mean()} if mode == "loss" else out

    class Four(torch.utils.data.Dataset):
        metainfo = {"classes": ("car",), "palette": np.array([[1, 2, 3]], np.uint8)}

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"inputs": torch.full((2,), float(i)), "labels": torch.tensor(float(i))}

    runner = Runner(model=Toy(), work_dir=str(tmp_path), experiment_name=f"ckpt-test-{uuid.uuid4().hex}",
                    train_dataloader=dict(dataset=Four(), sampler=dict(type="DefaultSampler", shuffle=False),
                                          batch_size=2, collate_fn=dict(type="default_collate")),
                    optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
                    param_scheduler=dict(type="MultiStepLR", milestones=[1], by_epoch=True),
                    train_cfg=dict(by_epoch=True, max_epochs=1), randomness=dict(seed=0),
                    cfg=dict(model=dict(type="Toy")))
    runner.train()
    path = tmp_path / "epoch_1.pth"
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert "mmengine.logging.history_buffer.HistoryBuffer" in found  # beyond torch's defaults ...
    assert found <= ckpt_mod._allowed_names()  # ... and all on our allowlist
    loaded = load_checkpoint(path)
    _assert_same(torch.load(path, weights_only=False), loaded)
    assert loaded["meta"]["epoch"] == 1 and loaded["meta"]["dataset_meta"]["palette"].dtype == np.uint8


class _OpenFile:
    """Unpickling this opens (creates) a file: stands for any code a checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Getattr:
    """Reaches past the HistoryBuffer statistics that ``builtins.getattr`` is narrowed to."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, "register_statistics"))


@pytest.mark.parametrize("payload, global_name", [(_OpenFile, "io.open"), (_System, "posix.system")])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, payload, global_name):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"x": payload(marker)}}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert global_name in msg and "evil.pth" in msg and "trust=True" in msg and "--unsafe-load" in msg
    assert not marker.exists()

    proc = subprocess.run([sys.executable, "tools/publish_model.py", str(path), str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and global_name in proc.stderr and "--unsafe-load" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out" / "evil.safetensors").exists()


def test_getattr_is_narrowed_to_history_buffer_statistics(tmp_path):
    path = tmp_path / "getattr.pth"
    torch.save({"meta": {"x": _Getattr()}}, path)
    with pytest.raises(UnsafeCheckpointError, match="register_statistics"):
        load_checkpoint(path)


def test_loading_does_not_rewrite_the_history_buffer_registry(tmp_path, monkeypatch):
    hub = MessageHub.get_instance(f"ckpt-test-{uuid.uuid4().hex}")
    hub.update_scalar("loss", 1.0)
    registry = HistoryBuffer._statistics_methods
    with monkeypatch.context() as m:  # the file carries 'mean' -> HistoryBuffer.max
        m.setitem(registry, "mean", HistoryBuffer.max)
        atomic_save({"message_hub": hub.state_dict()}, tmp_path / "a.pth")
    load_checkpoint(tmp_path / "a.pth")
    assert registry["mean"] is HistoryBuffer.mean


def test_trust_loads_what_safe_mode_refuses(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"meta": {"when": Path("/x")}}, path)
    with pytest.raises(UnsafeCheckpointError, match="pathlib"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True)["meta"]["when"] == Path("/x")


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    atomic_save({"state_dict": {"w": torch.zeros(64)}}, path)

    def half_then_fail(obj, f):
        data = _bytes_of(obj)
        f.write(data[: len(data) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write", half_then_fail)
    with pytest.raises(CheckpointError, match="No space left"):
        atomic_save({"state_dict": {"w": torch.ones(1 << 16)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(64))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


def test_process_killed_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "latest.pth"
    atomic_save({"state_dict": {"w": torch.zeros(64)}}, path)
    script = (
        "import io, os, sys, torch\n"
        "from perception.engine import checkpoint as c\n"
        "def die(obj, f):\n"
        "    b = io.BytesIO(); torch.save(obj, b); f.write(b.getvalue()[:1000]); f.flush(); os._exit(9)\n"
        "c._write = die\n"
        "c.atomic_save({'state_dict': {'w': torch.ones(1 << 16)}}, sys.argv[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(64))
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "latest.pth"]  # the dead process's temp file
    assert leftover.name.startswith(".latest.pth.tmp-")


def _bytes_of(obj) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_truncated_corrupt_and_missing_files_raise_checkpoint_error(tmp_path):
    data = _bytes_of(_mmengine_checkpoint())
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth") as err:
        load_checkpoint(truncated)
    assert not isinstance(err.value, UnsafeCheckpointError)

    garbage = tmp_path / "notes.pth"
    garbage.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint(garbage)

    with pytest.raises(CheckpointError, match="nope.pth.*no such"):
        load_checkpoint(tmp_path / "nope.pth")

    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.ones(3), not_a_dict)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        load_checkpoint(not_a_dict)


def test_atomic_write_text_replaces_whole_file(tmp_path):
    p = tmp_path / "last_checkpoint"
    atomic_write_text(p, "/runs/epoch_1.pth")
    atomic_write_text(p, "/runs/epoch_2.pth")
    assert p.read_text() == "/runs/epoch_2.pth"
    assert [q.name for q in tmp_path.iterdir()] == ["last_checkpoint"]


def test_export_safetensors_round_trip_and_manifest(tmp_path):
    ckpt = _mmengine_checkpoint()
    ckpt["state_dict"] = OrderedDict((f"module.{k}", v) for k, v in ckpt["state_dict"].items())  # DDP keys
    src = atomic_save(ckpt, tmp_path / "epoch_3.pth")
    out_dir = tmp_path / "published"

    out = export_safetensors(src, out_dir, name="bev_center")
    assert out == out_dir / "bev_center.safetensors"
    loaded = load_checkpoint(out)
    expected = {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    assert set(loaded["state_dict"]) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded["state_dict"][k], v), k

    manifest = json.loads((out_dir / "manifest.json").read_text())
    entry = manifest["files"]["bev_center.safetensors"]
    assert entry["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert entry["size"] == out.stat().st_size
    assert entry["num_tensors"] == len(expected)
    assert entry["num_parameters"] == sum(v.numel() for v in expected.values())
    assert (entry["source"], entry["epoch"], entry["iter"]) == ("epoch_3.pth", 3, 120)
    assert entry["config"] == ckpt["meta"]["cfg"] and entry["torch_version"] == torch.__version__
    assert entry["created"].endswith("+00:00")
    assert verify_manifest(out) == entry and loaded["meta"]["sha256"] == entry["sha256"]

    export_safetensors(src, out_dir, name="bev_center_v2")
    assert set(json.loads((out_dir / "manifest.json").read_text())["files"]) == {
        "bev_center.safetensors", "bev_center_v2.safetensors"}

    raw = bytearray(out.read_bytes())
    raw[-1] ^= 0x01  # one bit in the last tensor's data
    out.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="sha256"):
        verify_manifest(out)


def test_publish_model_tool_prints_path_and_sha(tmp_path, capsys):
    from tools import publish_model

    src = atomic_save({"state_dict": _model().state_dict(), "meta": {"epoch": 1}}, tmp_path / "epoch_1.pth")
    assert publish_model.main([str(src), str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "epoch_1.safetensors"
    printed = capsys.readouterr().out.split()
    assert str(out) in printed and hashlib.sha256(out.read_bytes()).hexdigest() in printed
    assert publish_model.main([str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_state_dict_shape_mismatches():
    model = {"conv.weight": torch.zeros(4, 3, 3, 3), "head.bias": torch.zeros(10), "only_model": torch.zeros(1)}
    same = {"conv.weight": torch.ones(4, 3, 3, 3), "head.bias": torch.ones(10), "only_ckpt": torch.zeros(2)}
    assert state_dict_shape_mismatches(model, same) == []
    other = dict(same, **{"head.bias": torch.ones(3)})
    assert state_dict_shape_mismatches(model, other) == ["head.bias: checkpoint [3] vs model [10]"]


def test_sparse_conv_weights_survive_mmdet3d_spconv_patch(tmp_path):
    """Weights without module versions (safetensors, plain dicts) load intact after mmdet3d patches spconv.

    Importing mmdet3d.models replaces spconv's ``_load_from_state_dict`` with one that permutes any
    weight whose module version is not 2 (spconv 1.x's layout): a plain ``load_state_dict`` then fails.
    """
    import spconv.pytorch as spconv

    import mmdet3d.models.layers  # noqa: F401 - registers mmdet3d's spconv overrides
    from perception.engine.checkpoint import load_weights

    torch.manual_seed(0)
    src = spconv.SparseSequential(spconv.SubMConv3d(5, 8, 3, indice_key="a"), spconv.SubMConv3d(8, 8, 3, indice_key="a"))
    plain = {k: v.clone() for k, v in src.state_dict().items()}  # no _metadata, as after safetensors
    dst = spconv.SparseSequential(spconv.SubMConv3d(5, 8, 3, indice_key="a"), spconv.SubMConv3d(8, 8, 3, indice_key="a"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        dst.load_state_dict(dict(plain))
    missing, unexpected = load_weights(dst, plain, strict=True)
    assert not missing and not unexpected
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
